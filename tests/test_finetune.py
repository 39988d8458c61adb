"""Fine-tuning from a medvlm checkpoint: LoRA adapters train, merge and reload as a plain model."""

import pytest
import torch
from safetensors.torch import load_file

from medvlm import MedVLMForConditionalGeneration
from medvlm.finetuning import freeze_towers
from tiny import ROOT, TINY, load_script, tiny_config


def test_lora_finetune_merges_and_reloads(pretrained, tmp_path):
    out = tmp_path / "lora"
    assert load_script("train").main([
        "--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", *TINY,
        f"train.init_from={pretrained}", "train.max_steps=3", "train.eval_every=0", "train.save_every=2",
        "train.learning_rate=1.0e-2", "train.lora={r: 4, alpha: 8, towers: [fusion, text]}"]) == 0
    merged = load_file(str(out / "final" / "model.safetensors"))
    base = load_file(str(pretrained / "model.safetensors"))
    assert merged.keys() == base.keys()  # no adapter tensors left: a plain medvlm model
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(".fusion." in k or ".text." in k for k in changed)
    assert not any("vision" in k for k in changed)
    model = MedVLMForConditionalGeneration.from_pretrained(str(out / "final"))
    assert model(torch.tensor([[1, 5, 2]]), torch.randn(1, 1, 32, 32)).logits.shape[-1] == model.config.vocab_size
    # checkpoints of a LoRA run keep the adapters for resuming
    assert (out / "checkpoints" / "step-0000002" / "trainable.safetensors").is_file()


def test_freeze_towers():
    model = MedVLMForConditionalGeneration(tiny_config())
    freeze_towers(model, ["vision", "text"])
    assert not any(p.requires_grad for p in model.model.vision.parameters())
    assert not any(p.requires_grad for p in model.model.text.parameters())
    assert all(p.requires_grad for p in model.model.fusion.parameters())
    with pytest.raises(ValueError, match="unknown tower"):
        freeze_towers(model, ["decoder"])
