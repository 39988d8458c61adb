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


def test_tower_learning_rates_split_the_groups():
    from medvlm.finetuning import tower_learning_rate_groups

    model = MedVLMForConditionalGeneration(tiny_config())
    groups = tower_learning_rate_groups(model, model.optimizer_groups(0.05), {"vision": 1e-5, "text": 2e-5})
    rate_of = {id(p): g.get("lr") for g in groups for p in g["params"]}
    assert {rate_of[id(p)] for p in model.model.vision.parameters()} == {1e-5}
    assert {rate_of[id(p)] for p in model.model.text.parameters()} == {2e-5}
    assert {rate_of[id(p)] for p in model.model.fusion.parameters()} == {None}  # train.learning_rate
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    with pytest.raises(ValueError, match="unknown tower"):
        tower_learning_rate_groups(model, model.optimizer_groups(0.05), {"decoder": 1e-5})


def test_extend_vocabulary_bf16_weights_and_tower_rates_through_train_py(pretrained, tmp_path, capsys):
    """Fine-tuning a checkpoint on new text: the vocabulary grows by pieces fitted on it (old ids
    kept), the coverage is printed, the weights are held in bfloat16, pretrained towers train at
    their own rate; the saved model and tokenizer agree and reload."""
    from medvlm.processing import MedVLMProcessor

    out = tmp_path / "grown"
    assert load_script("train").main([
        "--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", *TINY,
        f"train.init_from={pretrained}", "train.max_steps=2", "train.eval_every=0", "train.save_every=0",
        "train.extend_vocabulary=40", "train.dtype=bfloat16",
        "train.tower_learning_rates={vision: 1.0e-5, text: 1.0e-5}",
        "data.options={num_train: 160, num_validation: 8, num_test: 8, seed: 5}"]) == 0  # more text than it saw
    printed = capsys.readouterr().out
    assert "pieces per word" in printed and "vocabulary extended by" in printed
    old = MedVLMProcessor.from_pretrained(pretrained).tokenizer
    new = MedVLMProcessor.from_pretrained(out / "final").tokenizer
    model = MedVLMForConditionalGeneration.from_pretrained(str(out / "final"))
    assert len(new) > len(old) and model.config.vocab_size == len(new)
    assert all(new.convert_tokens_to_ids(t) == i for t, i in old.get_vocab().items())
    assert model.dtype == torch.bfloat16


def test_extend_vocabulary_needs_init_from():
    from medvlm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="extend_vocabulary' needs train.init_from"):
        load_config(ROOT / "configs/demo.yaml", ["train.extend_vocabulary=10"])


def test_lora_full_towers_train_beside_the_adapters():
    from medvlm.errors import UserError
    from medvlm.finetuning import add_lora

    lora = add_lora(MedVLMForConditionalGeneration(tiny_config()), {"towers": ["text"], "full_towers": ["fusion"]})
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any(".fusion." in n and "lora_" not in n for n in trainable)  # new layers in full
    assert any(".text." in n and "lora_" in n for n in trainable)
    assert not any(".text." in n and "lora_" not in n for n in trainable)  # the LM itself frozen
    assert not any(".vision." in n for n in trainable)
    with pytest.raises(UserError, match="both adapted"):
        add_lora(MedVLMForConditionalGeneration(tiny_config()), {"towers": ["text"], "full_towers": ["text"]})
