"""Explanations measured on the built-in data: maps scored against the synthetic finding masks.

For each test study with findings and each kind of finding in it (both sides of an effusion
or a pneumothorax, and all devices, count as one kind with the union of their masks):
- cross-attention (VLM): the reference report is teacher-forced and the maps of the words of the
  finding's phrase are averaged: its first sentence that names it (`KINDS[kind].keywords`), from
  the sentence start through the name (`rows="phrase"`). The map of a word is the attention of
  the position that predicted it, and a finding's name is mostly settled by the words before it
  ("Mild pulmonary" -> "edema"); the image is read where the sentence commits to the finding,
  from its first word on. `rows="keyword"`: the maps of the naming words alone, every mention;
- Grad-CAM (VLM): of the zero-shot score of the finding's observation (similarity to its
  positive prompts minus similarity to its negative prompts);
- Grad-CAM (CheXNet): of the observation's logit.
Maps are upsampled to the image and scored with `metrics.localization` (pointing game with a
tolerance of 15/224 of the image side, i.e. Zhang et al.'s 15 px at 224 px, 9 px at 128 px;
IoU of the top-k pixels, k = mask area).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..explain.attention import check_weighting, cross_attention_maps, cross_attention_relevance, word_positions
from ..explain.overlay import upsample
from ..explain.targets import classifier_cams, default_layer, similarity_cams
from ..metrics.localization import localization_scores

TOLERANCE_FRACTION = 15 / 224


@dataclass(frozen=True)
class Kind:
    observation: str
    keywords: tuple[str, ...]
    masks: tuple[str, ...]  # synthetic FINDINGS names drawn for this kind


KINDS = {
    "pleural_effusion": Kind("Pleural Effusion", ("effusion", "effusions"),
                             ("pleural_effusion_left", "pleural_effusion_right")),
    "cardiomegaly": Kind("Cardiomegaly", ("cardiomegaly", "cardiac", "enlarged"), ("cardiomegaly",)),
    "lung_opacity": Kind("Lung Opacity", ("opacity", "consolidation"), ("lung_opacity",)),
    "nodule": Kind("Lung Lesion", ("nodule",), ("nodule",)),
    "pneumothorax": Kind("Pneumothorax", ("pneumothorax",), ("pneumothorax_left", "pneumothorax_right")),
    "edema": Kind("Edema", ("edema",), ("edema",)),
    "atelectasis": Kind("Atelectasis", ("atelectasis",), ("atelectasis",)),
    "support_devices": Kind("Support Devices", ("tube", "catheter", "pacemaker", "devices"),
                            ("endotracheal_tube", "central_venous_catheter", "pacemaker")),
}


def tolerance_pixels(image_size: int) -> int:
    return int(round(TOLERANCE_FRACTION * image_size))


def synthetic_test_studies(options: dict, split: str, image_size: int, limit: int = 100) -> list[dict]:
    """Up to `limit` studies *with findings* (and their masks) of a synthetic split, the same
    studies `data.dataset=synthetic` with these options yields for that split."""
    from ..data.sources import SPLITS, SYNTHETIC_DEFAULTS
    from ..data.synthetic import make_study

    opts = {**SYNTHETIC_DEFAULTS, **{k: v for k, v in options.items() if k in SYNTHETIC_DEFAULTS}}
    sizes = [opts["num_train"], opts["num_validation"], opts["num_test"]]
    start = sum(sizes[: SPLITS.index(split)])
    studies = []
    for index in range(start, start + sizes[SPLITS.index(split)]):
        study = make_study(index, seed=opts["seed"], image_size=image_size)
        if study["meta"]:
            studies.append(study)
        if len(studies) >= limit:
            break
    return studies


def finding_targets(study: dict) -> list[tuple[str, np.ndarray]]:
    """(kind, union mask (H, W)) for every kind of finding drawn in the study."""
    out = []
    for kind, spec in KINDS.items():
        masks = [study["masks"][name] for name in spec.masks if name in study["masks"]]
        if masks and np.any(masks):
            out.append((kind, np.logical_or.reduce(masks)))
    return out


def _word(word: str) -> str:
    return re.sub(r"[^\w-]", "", word.lower())


def _scores(maps, masks, kinds, tolerance: int, prefix: str) -> dict:
    out = localization_scores(maps, masks, tolerance, prefix)
    for kind in KINDS:
        chosen = [i for i, k in enumerate(kinds) if k == kind]
        if chosen:
            part = localization_scores([maps[i] for i in chosen], [masks[i] for i in chosen], tolerance, prefix)
            out[f"{prefix}_pointing_game.{kind}"] = part[f"{prefix}_pointing_game"]
    out[f"{prefix}_tolerance_px"] = tolerance
    return out


ROWS = ("phrase", "keyword")


def _ends_sentence(word: str) -> bool:
    return word.endswith((".", ":"))


def finding_positions(words: list[tuple[str, list[int]]], keywords: tuple[str, ...], rows: str) -> list[int]:
    """Token positions whose maps stand for a finding (see the module docstring): `rows="phrase"`,
    the first sentence naming it, from its start through the name; `"keyword"`, every naming word.
    words: `word_positions` of the report. [] when the report does not name the finding."""
    named = [i for i, (word, _) in enumerate(words) if _word(word) in keywords]
    if not named:
        return []
    if rows == "keyword":
        return [p for i in named for p in words[i][1]]
    start = named[0]
    while start > 0 and not _ends_sentence(words[start - 1][0]):
        start -= 1
    return [p for _, positions in words[start:named[0] + 1] for p in positions]


def attention_localization(model, processor, studies, layers=None, heads=None, weighting: str = "raw",
                           rows: str = "phrase", prefix: str = "explain") -> dict:
    """Cross-attention maps of each finding's phrase (or naming words, `rows`) in the
    teacher-forced reference report: raw attention averaged over layers and heads
    (`weighting="raw"`), or gradient-weighted (`"gradient"`, see `cross_attention_relevance`)."""
    check_weighting(weighting)
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS}, got {rows!r}")
    device = next(model.parameters()).device
    maps, masks, kinds = [], [], []
    for study in studies:
        pixels = processor.images([study["image"]]).to(device)
        batch = processor.texts([study.get("report", study["text"])])
        ids = batch["input_ids"].to(device)
        words = word_positions(processor.tokenizer, ids[0].cpu(), start=1)
        targets = []
        for kind, mask in finding_targets(study):
            positions = finding_positions(words, KINDS[kind].keywords, rows)
            if positions:
                targets.append((kind, mask, positions))
        if not targets:
            continue
        if weighting == "raw":
            attention = cross_attention_maps(model, pixels, ids, batch["attention_mask"].to(device), layers, heads)[0]
            found = [attention[[p - 1 for p in positions]].mean(dim=0) for _, _, positions in targets]
        else:
            found = cross_attention_relevance(model, pixels, ids, [t[2] for t in targets], layers, heads)
        for (kind, mask, _), heat in zip(targets, found):
            maps.append(upsample(heat.cpu().numpy(), mask.shape))
            masks.append(mask)
            kinds.append(kind)
    return _scores(maps, masks, kinds, tolerance_pixels(processor.image_size), prefix)


def vlm_gradcam_localization(model, processor, studies, layer: str | None = None, prompts: dict | None = None,
                             contrast: bool = True, elementwise: bool = False,
                             prefix: str = "explain_gradcam") -> dict:
    """Grad-CAM of the image-text score for each finding's observation: the zero-shot score
    cos(image, positive prompts) - cos(image, negative prompts) (`contrast`), or the similarity
    to the positive prompts alone."""
    from .zero_shot import DEFAULT_PROMPTS, prompt_embeddings

    device = next(model.parameters()).device
    prompts = prompts or DEFAULT_PROMPTS
    observations = sorted({spec.observation for spec in KINDS.values()})
    positive, negative = prompt_embeddings(model, processor, {o: prompts[o] for o in observations})
    directions = positive - negative if contrast else positive  # (O, E)
    text_of = {o: torch.from_numpy(directions[i]).float() for i, o in enumerate(observations)}
    maps, masks, kinds = [], [], []
    for study in studies:
        targets = finding_targets(study)
        if not targets:
            continue
        pixels = processor.images([study["image"]]).to(device).expand(len(targets), -1, -1, -1)
        texts = torch.stack([text_of[KINDS[kind].observation] for kind, _ in targets])  # (B, E)
        for (kind, mask), cam in zip(targets, similarity_cams(model, pixels, texts, layer, elementwise)):
            maps.append(cam.cpu().numpy())
            masks.append(mask)
            kinds.append(kind)
    out = _scores(maps, masks, kinds, tolerance_pixels(processor.image_size), prefix)
    out[f"{prefix}_layer"] = layer or default_layer(model)
    return out


def classifier_gradcam_localization(model, processor, studies, layer: str | None = None, elementwise: bool = False,
                                    prefix: str = "explain") -> dict:
    """Grad-CAM of the CheXNet logit of each finding's observation."""
    device = next(model.parameters()).device
    names = list(model.config.label_names)
    maps, masks, kinds = [], [], []
    for study in studies:
        targets = [(k, m) for k, m in finding_targets(study) if KINDS[k].observation in names]
        if not targets:
            continue
        pixels = processor.images([study["image"]]).to(device).expand(len(targets), -1, -1, -1)
        columns = torch.tensor([names.index(KINDS[kind].observation) for kind, _ in targets])
        for (kind, mask), cam in zip(targets, classifier_cams(model, pixels, columns, layer, elementwise)):
            maps.append(cam.cpu().numpy())
            masks.append(mask)
            kinds.append(kind)
    out = _scores(maps, masks, kinds, tolerance_pixels(processor.image_size), prefix)
    out[f"{prefix}_layer"] = layer or default_layer(model)
    return out
