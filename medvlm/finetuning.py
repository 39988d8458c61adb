"""Cheap fine-tuning: freeze whole towers, or train LoRA adapters (peft) and merge them for export."""

import copy
import re

import torch
from torch import nn

from .errors import UserError

TOWERS = ("vision", "text", "fusion")
def freeze_towers(model, towers: list[str]) -> None:
    """Stop gradients to the named towers (`model.tower_modules()`: vision, text, fusion)."""
    unknown = set(towers) - set(TOWERS)
    if unknown:
        raise UserError(f"train.freeze: unknown tower(s) {sorted(unknown)}; choose from {list(TOWERS)}")
    modules = model.tower_modules()
    for tower in towers:
        for module in modules[tower]:
            module.requires_grad_(False)


def lora_target_regex(towers: list[str], targets: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    """peft's `target_modules` regex: under each tower's block prefix, the modules whose names
    end in one of its target suffixes (`model.lora_targets()`)."""
    parts = [f"{re.escape(targets[t][0])}\\..*\\.({'|'.join(targets[t][1])})" for t in towers]
    return "^(" + "|".join(parts) + ")$"


def add_lora(model, settings: dict):
    """Wrap `model` with LoRA adapters on the named `towers`; the `full_towers` train in full
    beside them (e.g. new fusion layers over adapted pretrained towers); the rest is frozen."""
    from peft import LoraConfig, get_peft_model

    known = {"r", "alpha", "dropout", "towers", "full_towers"}
    unknown = set(settings) - known
    if unknown:
        raise UserError(f"train.lora: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    towers = list(settings.get("towers", ["fusion", "text"]))
    full = list(settings.get("full_towers", []))
    for key, names in (("towers", towers), ("full_towers", full)):
        bad = set(names) - set(TOWERS)
        if bad:
            raise UserError(f"train.lora.{key}: unknown tower(s) {sorted(bad)}; choose from {list(TOWERS)}")
    if set(towers) & set(full):
        raise UserError(f"train.lora: {sorted(set(towers) & set(full))} both adapted (towers) and trained in full "
                        "(full_towers); name each tower in one of them")
    config = LoraConfig(
        r=int(settings.get("r", 8)),
        lora_alpha=int(settings.get("alpha", 16)),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=lora_target_regex(towers, model.lora_targets()),
    )
    modules = model.tower_modules()
    wrapped = get_peft_model(model, config)
    for tower in full:
        for item in modules[tower]:
            item.requires_grad_(True)
    return wrapped


def base_model(model):
    """The MedVLM model under a LoRA wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def exportable(model):
    """A plain MedVLM model for saving: LoRA weights merged into a copy, the training model untouched."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def prepare_for_finetuning(model, freeze: list[str], lora: dict | None):
    """Apply `train.freeze` and `train.lora` to a freshly built or loaded model."""
    if freeze:
        freeze_towers(model, freeze)
    if lora is not None:
        model = add_lora(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise UserError("nothing to train: every parameter is frozen (check train.freeze)")
    return model


def trainable_state(model) -> dict:
    """Tensors of the trainable parameters (for resuming a LoRA run: the frozen base is rebuilt)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def tower_learning_rate_groups(model, groups: list[dict], rates: dict[str, float]) -> list[dict]:
    """Split AdamW groups so each tower named in `rates` (`train.tower_learning_rates`, e.g.
    {vision: 1.0e-5, text: 2.0e-5}) trains at its own rate: pretrained towers gently, the new
    fusion layers at `train.learning_rate`. The warmup and cosine scale every group alike."""
    if not rates:
        return groups
    unknown = set(rates) - set(TOWERS)
    if unknown:
        raise UserError(f"train.tower_learning_rates: unknown tower(s) {sorted(unknown)}; choose from {list(TOWERS)}")
    towers = base_model(model).tower_modules()
    tower_of = {}
    for tower, items in towers.items():
        for item in items:
            for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
                tower_of[id(p)] = tower
    split = []
    for group in groups:
        by_rate: dict[float | None, list] = {}
        for p in group["params"]:
            by_rate.setdefault(rates.get(tower_of.get(id(p))), []).append(p)
        for rate, params in by_rate.items():
            split.append({**group, "params": params, **({} if rate is None else {"lr": rate})})
    return split


def cast_weights(model, dtype: str):
    """`train.dtype`: hold every weight (and so AdamW's states) in bfloat16, half the memory of
    float32, as large pretrained LMs are usually fine-tuned; float32 leaves the model as it is."""
    if dtype == "float32":
        return model
    return model.to(getattr(torch, dtype))
