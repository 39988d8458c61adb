"""End to end through the same entry points a user runs: train.main(argv), eval.main(argv)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"medvlm_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "data.options={num_train: 24, num_validation: 8, num_test: 8, seed: 3}",
    "data.image_size=32",
    "data.max_length=96",
    "data.tokenizer_vocab_size=200",
    "model.vision.model_name=vit_tiny_patch16_224", "model.vision.timm_kwargs={embed_dim: 32, depth: 1, num_heads: 2}",
    "model.vision.token_reduction=null",  # the demo reads a CNN stage; the tiny tower is a ViT
    "model.text={model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2}",
    "model.fusion_layers=1", "model.fusion_heads=2", "model.embed_dim=16",
    "train.batch_size=8", "train.log_every=1", "train.eval_every=2", "train.eval_samples=4",
    "train.warmup_steps=1", "eval.max_new_tokens=12", "eval.batch_size=8", "eval.bootstrap_resamples=20",
]


def test_two_training_steps_then_eval(tmp_path):
    out = tmp_path / "run"
    assert load_script("train").main(
        ["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", "train.max_steps=2",
         "train.save_every=1", *TINY]) == 0
    final = out / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "run_config.yaml"):
        assert (final / name).is_file(), name
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert all(k in log[0] for k in ("caption_loss", "contrastive_loss", "lr"))
    assert any("val_loss" in r and "val_ce_micro_f1" in r for r in log)
    assert (out / "loss_curve.png").is_file()
    assert list((out / "checkpoints").glob("step-*"))  # periodic checkpoint kept

    assert load_script("eval").main(["--checkpoint", str(final), "eval.bootstrap_resamples=20"]) == 0
    metrics = json.loads((final / "eval" / "metrics.json").read_text())
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1",
                "baselines.most_frequent.bleu_4", "baselines.most_frequent.ce_micro_f1"):
        assert key in metrics, key
    assert (final / "eval" / "results.md").is_file()

    from medvlm import MedVLMForConditionalGeneration
    assert MedVLMForConditionalGeneration.from_pretrained(str(final)) is not None


def test_bad_override_is_reported_by_name(capsys):
    from medvlm.cli import main
    assert main(["train", "--config", str(ROOT / "configs/demo.yaml"), "train.max_stepz=2"]) == 2
    assert "train.max_stepz" in capsys.readouterr().err


def test_prepare_then_train_from_the_cache(tmp_path):
    from medvlm.cli import main

    cache = tmp_path / "cache"
    assert main(["prepare", "--config", str(ROOT / "configs/demo.yaml"), "--out", str(cache), "--workers", "0",
                 *TINY]) == 0
    for split in ("train", "validation", "test"):
        assert (cache / split).is_dir()
    out = tmp_path / "run"
    assert load_script("train").main(["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}",
                                      f"data.cache_dir={cache}", "train.max_steps=1", "train.eval_every=0",
                                      "train.save_every=0", *TINY]) == 0
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("option", ["train.gradient_checkpointing=true", "train.compile=true"])
def test_training_with_checkpointing_or_compile_saves_plain_weights(tmp_path, option):
    from safetensors import safe_open

    out = tmp_path / "run"
    assert load_script("train").main(
        ["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", "train.max_steps=2",
         "train.eval_every=0", "train.save_every=0", option, *TINY]) == 0
    with safe_open(str(out / "final" / "model.safetensors"), "pt") as weights:
        assert not [key for key in weights.keys() if "_orig_mod" in key]  # no compile/checkpoint wrappers saved
