"""Explain one image end to end and write the overlays (what `medvlm explain` runs).

- MedVLM, method "attention": generate a report (or, with a question, an answer) and write one
  panel per generated word with its cross-attention map, raw or gradient-weighted
  (`<stem>_attention.png`).
- MedVLM, method "gradcam": Grad-CAM of the similarity between the image and a text (`target`,
  default the generated report), minus the similarity to a `negative` text when one is given
  (the zero-shot score) (`<stem>_gradcam.png`).
- CheXNet (Grad-CAM only): one panel per target label (default the most probable label)
  (`<stem>_gradcam_<label>.png`).
- A study (`explain_study`: several views, optionally the prior study's images): one panel
  grid per image, each word's map over that image with the share of the word's attention that
  went to it (`<stem>_attention_<slot>_<view>.png`).
A `<stem>_explain.json` lists the text, words or label probabilities and the files written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import UserError
from ..processing import default_views
from .attention import cross_attention_maps, explain_generation, word_maps
from .overlay import display_image, save_overlay, save_word_overlays
from .targets import classifier_cams, default_layer, is_classifier, similarity_cams


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "target"


def _stem(image) -> str:
    return Path(image).stem if isinstance(image, (str, Path)) else "image"


def explain_image(model, processor, image, out_dir, method: str = "attention", question: str | None = None,
                  target: str | None = None, layers=None, heads=None, layer: str | None = None,
                  words: list[str] | None = None, max_words: int = 24, negative: str | None = None,
                  elementwise: bool = False, weighting: str = "raw") -> dict:
    """Write the overlays for one image (see the module docstring); returns the JSON summary."""
    out_dir = Path(out_dir)
    stem = _stem(image)
    mean, std = processor.image_transform.mean, processor.image_transform.std
    if is_classifier(model):
        summary = _classifier(model, processor, image, out_dir, stem, target, layer, elementwise, mean, std)
    elif method == "attention":
        result = explain_generation(model, processor, image, question, layers, heads, weighting=weighting)
        chosen = result["words"]
        if words:
            wanted = {w.lower() for w in words}
            chosen = [(w, m) for w, m in chosen if re.sub(r"[^\w-]", "", w.lower()) in wanted]
        chosen = chosen[:max_words]
        title = (f"Q: {question}  A: {result['text']}" if question else result["text"])
        path = save_word_overlays(display_image(result["pixels"], mean, std), [(w, m.numpy()) for w, m in chosen],
                                  out_dir / f"{stem}_attention.png", title=_wrap(title))
        summary = {"text": result["text"], "words": [w for w, _ in chosen], "files": [str(path)],
                   "layers": layers, "heads": heads, "weighting": weighting}
    elif method == "gradcam":
        summary = _similarity(model, processor, image, out_dir, stem, question, target, negative, layer, elementwise,
                              mean, std)
    else:
        raise UserError(f"method must be 'attention' or 'gradcam', got {method!r}")
    summary["image"] = str(image)
    (out_dir / f"{stem}_explain.json").write_text(json.dumps(summary, indent=1))
    return summary


def _wrap(text: str, width: int = 110) -> str:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def _classifier(model, processor, image, out_dir, stem, target, layer, elementwise, mean, std) -> dict:
    names = list(model.config.label_names)
    device = next(model.parameters()).device
    pixels = processor.images([image]).to(device)
    with torch.no_grad():
        model.eval()
        probabilities = torch.sigmoid(model(pixel_values=pixels).logits[0]).cpu()
    if target:
        labels = [t.strip() for t in target.split(",")]
        unknown = [t for t in labels if t not in names]
        if unknown:
            raise UserError(f"--target {unknown} not among the model's labels {names}")
    else:
        labels = [names[int(probabilities.argmax())]]
    columns = torch.tensor([names.index(t) for t in labels])
    cams = classifier_cams(model, pixels.expand(len(labels), -1, -1, -1), columns, layer, elementwise)
    files = []
    for label, cam in zip(labels, cams):
        p = float(probabilities[names.index(label)])
        files.append(str(save_overlay(display_image(pixels[0].cpu(), mean, std), cam.cpu().numpy(),
                                      out_dir / f"{stem}_gradcam_{_slug(label)}.png",
                                      title=f"Grad-CAM: {label} (p={p:.2f})")))
    return {"probabilities": {n: round(float(p), 4) for n, p in zip(names, probabilities)}, "targets": labels,
            "layer": layer or default_layer(model), "files": files}


def _similarity(model, processor, image, out_dir, stem, question, target, negative, layer, elementwise,
                mean, std) -> dict:
    device = next(model.parameters()).device
    pixels = processor.images([image]).to(device)
    text = target or explain_generation(model, processor, image, question)["text"]
    texts = [text] + ([negative] if negative else [])
    batch = processor.texts(texts)
    with torch.no_grad():
        embeds = model.get_text_features(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    direction = embeds[:1] - embeds[1:2] if negative else embeds[:1]  # (1, E) score = image . direction
    cam = similarity_cams(model, pixels, direction, layer, elementwise)[0]
    label = f"similarity to: {text}" + (f" minus: {negative}" if negative else "")
    path = save_overlay(display_image(pixels[0].cpu(), mean, std), cam.cpu().numpy(), out_dir / f"{stem}_gradcam.png",
                        title=_wrap(f"Grad-CAM of {label}", 50))
    return {"text": text, "negative": negative, "layer": layer or default_layer(model), "files": [str(path)]}


@torch.no_grad()
def explain_study(model, processor, images: list, out_dir, views=(), prior_images=(), prior_views=(),
                  layers=None, heads=None, words: list[str] | None = None, max_words: int = 24,
                  max_new_tokens: int = 96, prior_report: str = "") -> dict:
    """Generate a report for one study and write, per image (current views, then the prior's),
    each word's raw cross-attention over that image; the JSON summary gives every word's share
    of attention per image (what it read where). A `prior_report` processor's model writes after
    the prior's report (`prior_report`)."""
    out_dir = Path(out_dir)
    stem = _stem(images[0])
    device = next(model.parameters()).device
    study = {k: v.to(device) for k, v in processor.study(images, views, prior_images, prior_views).items()}
    prompt = ({k: v.to(device) for k, v in processor.prompts([prior_report], reserve=max_new_tokens).items()}
              if processor.prior_report else {})
    start = prompt["input_ids"].shape[1] if prompt else 1
    sequences = model.generate(**study, **prompt, do_sample=False, max_new_tokens=max_new_tokens)
    text = processor.decode(sequences, skip_prompt=start)[0]
    inputs = sequences[:, :-1]  # the last token's row predicts nothing
    maps = cross_attention_maps(model, study["pixel_values"], inputs, torch.ones_like(inputs), layers, heads,
                                study["image_views"], study["image_is_prior"])[0]  # (T, K, h, w)
    chosen = word_maps(processor.tokenizer, sequences[0], maps, start)
    if words:
        wanted = {w.lower() for w in words}
        chosen = [(w, m) for w, m in chosen if re.sub(r"[^\w-]", "", w.lower()) in wanted]
    chosen = chosen[:max_words]  # [(word, (K, h, w))]
    names = [v or "view" for v in (list(views) or default_views(len(images)))]
    names += [f"prior {v or 'view'}" for v in (list(prior_views) or default_views(len(prior_images)))]
    mean, std = processor.image_transform.mean, processor.image_transform.std
    shares = [[round(float(m[k].sum()), 4) for k in range(len(names))] for _, m in chosen]  # per word, per image
    files = []
    for k, name in enumerate(names):
        panels = [(f"{w} ({100 * share[k]:.0f}%)", m[k].cpu().numpy()) for (w, m), share in zip(chosen, shares)]
        path = out_dir / f"{stem}_attention_{k}_{_slug(name)}.png"
        files.append(str(save_word_overlays(display_image(study["pixel_values"][0, k].cpu(), mean, std), panels, path,
                                            title=_wrap(f"{name}: {text}"))))
    summary = {"text": text, "images": [str(i) for i in images], "prior_images": [str(i) for i in prior_images],
               "slots": names, "words": [w for w, _ in chosen],
               "attention_share": [dict(zip(names, share)) for share in shares], "files": files}
    (out_dir / f"{stem}_explain.json").write_text(json.dumps(summary, indent=1))
    return summary
