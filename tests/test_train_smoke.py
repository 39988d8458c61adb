"""End to end through the same entry points a user runs: train.main(argv), eval.main(argv)."""

import json

import pytest

from tiny import ROOT, TINY, load_script


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
    metrics = json.loads((final.parent / "final-eval" / "metrics.json").read_text())
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1",
                "baselines.most_frequent.bleu_4", "baselines.most_frequent.ce_micro_f1"):
        assert key in metrics, key
    assert (final.parent / "final-eval" / "results.md").is_file()

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
