"""The LM-fusion decoding benchmark runs end to end at its tiny size (ours and the bare LM, 1 and
8 images) and builds its Qwen2.5-0.5B configuration on the meta device. No timing is asserted."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_lm_fusion  # noqa: E402

QWEN25_05B_PARAMS = 494_032_768  # Qwen2.5-0.5B, tied embeddings counted once


def test_lm_fusion_benchmark_tiny_run_and_full_size_build(tmp_path):
    threads = torch.get_num_threads()  # --threads sets it for the whole process
    out = tmp_path / "lm_fusion.json"
    try:
        # one thread: a smoke run measures nothing, and OpenMP barriers stall on a loaded machine
        result = bench_lm_fusion.main(["--text-size", "tiny", "--rounds", "1", "--new-tokens", "4",
                                       "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == result
    assert set(result["cases"]) == {"images_1", "images_8"}
    for case in result["cases"].values():
        for key in ("ours_s", "bare_s", "ours_first_token_s", "bare_first_token_s", "encode_s"):
            assert case[key] > 0, key
        assert case["ratio"] == case["ours_s"] / case["bare_s"] > 0
        assert case["ours_decode_ms_per_token"] is not None and case["bare_decode_ms_per_token"] is not None
    assert set(result["targets"]) == {"greedy images_1 s <= 1.15x bare LM", "greedy images_8 s <= 1.15x bare LM"}
    assert {"cpu", "blas", "threads", "loadavg_start", "loadavg_end"} <= set(result["machine"])
    assert result["machine"]["threads"] == 1 and result["settings"]["new_tokens"] == 4
    assert result["params"]["lm"] == result["params"]["bare_lm"] > 0 and result["params"]["fusion"] > 0

    full = bench_lm_fusion.main(["--build-only"])  # meta device: no weights allocated
    assert full["params"]["lm"] == full["params"]["bare_lm"] == QWEN25_05B_PARAMS
    assert full["config"]["medvlm_config"]["fusion_heads"] == 14
    assert full["models"]["vocab_rows"] == {"ours": 151936, "bare_lm": 151936}
