"""bf16 and int8 weights for CPU report generation (medvlm.modeling.inference_weights)."""

import typing

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from transformers.pytorch_utils import Conv1D

from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.config import WeightFormat
from medvlm.modeling.inference_weights import WEIGHT_FORMATS, for_generation, quantized_int8
from tiny import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MedVLMForConditionalGeneration(tiny_config("gpt2")).eval()


def logits_of(model, pixels, ids):
    with torch.inference_mode():
        return model(ids, pixel_values=pixels.to(next(model.parameters()).dtype)).logits.float()


def test_int8_quantises_every_linear_map_and_leaves_the_model_alone(model):
    torch.manual_seed(1)
    pixels, ids = torch.randn(2, 1, 32, 32), torch.randint(3, 64, (2, 9))
    before = logits_of(model, pixels, ids)
    quantized = quantized_int8(model)
    int8 = [m for m in quantized.modules() if isinstance(m, DynamicQuantizedLinear)]
    float_linear = [m for m in quantized.modules() if isinstance(m, (nn.Linear, Conv1D))]
    assert int8 and not float_linear
    assert isinstance(quantized.quantized_lm_head, DynamicQuantizedLinear)
    # the original keeps its float layers and gives the same logits as before
    assert model.quantized_lm_head is None and any(isinstance(m, Conv1D) for m in model.modules())
    torch.testing.assert_close(logits_of(model, pixels, ids), before)
    after = logits_of(quantized, pixels, ids)
    assert after.shape == before.shape
    # int8 weights with one scale per row: close to float, not equal
    error = (after - before).abs().max() / before.abs().max()
    assert 0 < error < 0.05, error
    top = (after.argmax(-1) == before.argmax(-1)).float().mean()
    assert top >= 0.9, top


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_every_weight_format_generates(model, weights):
    generator = for_generation(model, weights)
    assert (generator is model) == (weights == "fp32")
    pixels = torch.randn(2, 1, 32, 32).to(next(generator.parameters()).dtype)
    with torch.inference_mode():
        out = generator.generate(pixel_values=pixels, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert out.shape == (2, 7)
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        for_generation(model, "int4")
    assert typing.get_args(WeightFormat) == WEIGHT_FORMATS  # what eval.weights and --weights accept


def test_weights_agreement_benchmark_compares_every_format_with_fp32(pretrained, tmp_path, capsys):
    import json
    import sys

    from tiny import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import weights_agreement

    threads = torch.get_num_threads()
    try:
        result = weights_agreement.main(["--checkpoint", str(pretrained), "--max-samples", "4", "--batch-size", "2",
                                         "--threads", "1", "--out", str(tmp_path / "a.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "a.json").read_text()) == result
    assert result["reports"] == 4 and set(result["formats"]) == {"fp32", "bf16", "int8"}
    assert "label_agreement" not in result["formats"]["fp32"]
    for weights in ("bf16", "int8"):
        entry = result["formats"][weights]
        for key in ("label_agreement", "reports_all_labels_agree", "reports_identical"):
            assert 0.0 <= entry[key] <= 1.0
        assert entry["label_agreement"] >= entry["reports_all_labels_agree"]
        assert entry["s"] > 0 and entry["speedup_vs_fp32"] > 0
    capsys.readouterr()


def test_eval_and_generate_with_int8_weights(pretrained, tmp_path, monkeypatch):
    import json

    import numpy as np
    from PIL import Image

    import medvlm.tasks.report_generation as report_generation
    from medvlm.cli import main
    from tiny import load_script

    asked = []
    monkeypatch.setattr(report_generation, "for_generation",
                        lambda model, weights: asked.append(weights) or for_generation(model, weights))

    out = tmp_path / "int8-eval"
    assert load_script("eval").main(["--checkpoint", str(pretrained), "--out", str(out), "eval.weights=int8",
                                     "eval.bootstrap_resamples=5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ce_micro_f1" in metrics and metrics["num_samples"] > 0
    assert asked == ["int8"]

    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(image)
    reports = tmp_path / "reports.jsonl"
    assert main(["generate", str(image), "--checkpoint", str(pretrained), "--weights", "int8",
                 "--max-new-tokens", "5", "--out", str(reports)]) == 0
    (line,) = reports.read_text().splitlines()
    assert json.loads(line)["image"] == str(image)
