"""The two side-by-side benchmarks run end to end at tiny dims and print the documented keys.

No timing is asserted: the figures depend on the machine. Peers (open_clip CoCa, HF
VisionEncoderDecoder) are compared only where open_clip is installed (`pip install -e .[bench]`).
"""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_generate  # noqa: E402
import bench_train  # noqa: E402

TOP_KEYS = {"benchmark", "dims", "machine", "settings", "memory_method", "models", "skipped", "ratios", "targets"}
TRAIN_KEYS = {"params", "notes", "step_s", "step_min_s", "step_max_s", "samples_per_s", "flops_per_step",
              "achieved_gflops", "fraction_of_matmul_rate", "peak_mib"}
FIGURE_KEYS = {"s", "min_s", "max_s", "new_tokens_per_s", "peak_mib"}


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()  # the benchmarks set it for the whole process
    yield
    torch.set_num_threads(threads)


def run_any(main, tmp_path, capsys, argv=()):
    """A benchmark's main at tiny dims on one thread: its printed JSON, also written to --out."""
    out = tmp_path / "result.json"
    result = main(["--tiny", "--threads", "1", "--out", str(out), *argv])
    assert json.loads(capsys.readouterr().out) == result == json.loads(out.read_text())
    assert {"cpu", "blas", "loadavg_start", "loadavg_end", "overloaded_at_start", "threads"} <= set(result["machine"])
    return result


def run(main, argv, tmp_path, capsys):
    # one thread: a smoke run measures nothing, and OpenMP barriers stall on a loaded machine
    result = run_any(main, tmp_path, capsys, argv)
    assert TOP_KEYS <= set(result)
    assert result["machine"]["blas"]["name"]  # torch.__config__.show() names its BLAS
    return result


def test_train_benchmark_ours_alone(tmp_path, capsys):
    result = run(bench_train.main, ["--models", "medvlm"], tmp_path, capsys)
    entry = result["models"]["medvlm"]
    assert TRAIN_KEYS <= set(entry)
    assert entry["flops_per_step"] > 0 and entry["peak_mib"] > 0  # measured in a subprocess
    assert result["matmul_fp32"]["gflops"] > 0


def test_generate_benchmark_ours_alone(tmp_path, capsys):
    result = run(bench_generate.main, ["--models", "medvlm", "--variants", "bf16_weights", "--no-memory"],
                 tmp_path, capsys)
    assert set(result["models"]) == {"medvlm", "medvlm+bf16_weights"}
    floor = result["models"]["medvlm"]["greedy_1_weight_read_floor"]  # timed in the same rounds as the figures
    assert floor["s"] == min(floor["s_per_form"].values()) > 0 and len(floor["s_per_form"]) == 3
    for entry in result["models"].values():
        assert set(entry["figures"]) == {"greedy_1", "beam3_1", "greedy_2", "beam3_2"}
        for figure in entry["figures"].values():
            assert FIGURE_KEYS <= set(figure) and figure["s"] > 0


def test_both_benchmarks_against_the_peers(tmp_path, capsys):
    pytest.importorskip("open_clip")
    train = run(bench_train.main, ["--no-memory", "--variants", "ckpt"], tmp_path, capsys)
    assert set(train["models"]) == {"medvlm", "medvlm+ckpt", "open_clip_coca", "hf_vision_encoder_decoder"}
    assert {"step_s medvlm/open_clip_coca", "step_s medvlm/hf_vision_encoder_decoder"} <= set(train["ratios"])
    assert "train step <= 0.75x open_clip_coca" in train["targets"]

    generate = run(bench_generate.main, [], tmp_path, capsys)
    coca = generate["models"]["open_clip_coca"]["figures"]
    assert coca["beam3_1"]["s"] is None and "BeamSearchScorer" in coca["beam3_1"]["unavailable"]
    assert coca["greedy_2"]["s"] > 0
    for peer in ("open_clip_coca", "hf_vision_encoder_decoder"):
        assert generate["models"][peer]["figures"]["greedy_2"]["peak_mib"] > 0  # the one --tiny memory probe
        assert f"greedy_1 s medvlm/{peer}" in generate["ratios"]
    targets = generate["targets"]
    assert {"greedy_1 s <= 0.6x hf_vision_encoder_decoder", "greedy_1 s <= 0.25x open_clip_coca",
            "greedy_1 s <= 1.5x weight-read floor", "greedy_2 peak memory <= open_clip_coca"} <= set(targets)
    assert all(isinstance(t["ratio"], float) and t["met"] in (True, False) for t in targets.values())


def test_table_names_the_machine_of_every_row(tmp_path, capsys):
    import table

    train = run(bench_train.main, ["--models", "medvlm", "--no-memory"], tmp_path, capsys)
    (tmp_path / "train.json").write_text(json.dumps(train))
    generate = run(bench_generate.main, ["--models", "medvlm", "--no-memory"], tmp_path, capsys)
    generate["machine"]["overloaded_at_start"] = True
    (tmp_path / "generate.json").write_text(json.dumps(generate))
    table.main([str(tmp_path / "train.json"), str(tmp_path / "generate.json")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    machine = table.machine_name(train)
    assert machine.startswith(train["machine"]["cpu"].split(" / ")[0]) and "1 threads" in machine
    body = [row for row in rows if not row.startswith(("| machine", "| target"))]
    assert body and all(row.startswith(f"| train: {machine}; generate: {machine} (loaded)") or
                        row.startswith(f"| {machine}") for row in body)
    with pytest.raises(SystemExit):
        table.main([str(tmp_path / "train.json")])  # not a pair


def test_forms_benchmark_times_the_measured_choice_against_each_fixed_form(tmp_path, capsys):
    import bench_forms

    result = run_any(bench_forms.main, tmp_path, capsys)
    for figure in ("greedy_1", "beam3_2"):
        assert set(result["figures"][figure]) == {"measured", "always linear", "always columns"}
        assert all(s > 0 for s in result["figures"][figure].values())


def test_target_means_need_three_runs_of_one_machine(tmp_path, capsys):
    import target_means

    def run_json(i, ratio):
        result = {"benchmark": "generate", "machine": {"cpu": "AMD EPYC / AuthenticAMD", "threads": 2,
                                                       "blas": {"name": "mkl", "version": None}},
                  "targets": {"greedy_1 s <= 0.6x hf_vision_encoder_decoder": {"ratio": ratio, "met": ratio <= 0.6}}}
        (tmp_path / f"{i}.json").write_text(json.dumps(result))
        return str(tmp_path / f"{i}.json")

    files = [run_json(i, r) for i, r in enumerate([0.5, 0.7, 0.75])]
    (row,) = target_means.target_means([json.loads(Path(f).read_text()) for f in files])
    assert row["mean"] == pytest.approx(0.65) and row["runs_met"] == 1 and row["met"] is False
    target_means.main(files)
    assert "| greedy_1 s <= 0.6x hf_vision_encoder_decoder | 0.65 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        target_means.main(files[:2])  # fewer than 3 runs
