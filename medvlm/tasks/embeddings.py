"""The contrastive embeddings of a MedVLM model for lists of records and texts: what retrieval,
zero-shot classification and the nearest-neighbour report baseline compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..batch import BadItems
from ..processing import MedVLMProcessor, RecordDataset, stack_images, study_slots


def image_batches(records, processor: MedVLMProcessor, batch_size: int):
    """The model's image inputs for the records, in order, in batches, as the processor prepares
    them: {"pixel_values": (B, C, S, S)}, or for studies (B, K, C, S, S) with image_views and
    image_is_prior (see `RecordDataset`)."""
    yield from DataLoader(RecordDataset(records, processor), batch_size=batch_size, collate_fn=stack_images)


def on_device(images: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Image inputs moved to the model's device, pixels in its dtype (bf16 weights take bf16 pixels)."""
    first = next(model.parameters())
    return {k: v.to(first.device, first.dtype) if k == "pixel_values" else v.to(first.device)
            for k, v in images.items()}


def readable_images(processor: MedVLMProcessor, images: list, bad: BadItems) -> tuple[list, torch.Tensor | None]:
    """(the images that could be read, their (B, C, S, S) pixels); each one that could not is
    named in `bad` with its reason (or, with `bad.strict`, raises)."""
    kept, pixels = [], []
    for image in images:
        ok, tensor = bad.attempt(str(image), lambda: processor.images([image]))
        if ok:
            kept.append(image)
            pixels.append(tensor)
    return kept, torch.cat(pixels) if pixels else None


def readable_records(processor: MedVLMProcessor, records: list[dict], bad: BadItems) -> list[dict]:
    """The records whose images (every view, and the prior's) can be read and transformed; the
    others are named in `bad`. Images held as arrays (the built-in data) need no check."""
    def readable(record: dict) -> bool:
        images = [image for image, _, _ in study_slots(record, 10**6, 10**6)] + [record.get("image")]
        paths = list(dict.fromkeys(i for i in images if isinstance(i, (str, Path))))  # `image` too: single-image sets read it
        return all(bad.attempt(f"{image} (study {record.get('study_id')})", lambda image=image: processor.images([image]))[0]
                   for image in paths)

    return [record for record in records if readable(record)]


@torch.no_grad()
def image_embeddings(model, processor: MedVLMProcessor, records, batch_size: int = 64) -> np.ndarray:
    """(N, E) L2-normalised image embeddings."""
    parts = [model.get_image_features(**on_device(images, model)).float().cpu()
             for images in image_batches(records, processor, batch_size)]
    return torch.cat(parts).numpy()


@torch.no_grad()
def text_embeddings(model, processor: MedVLMProcessor, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, E) L2-normalised report embeddings, tokenised exactly as in training."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = processor.texts(list(texts[start:start + batch_size]))
        features = model.get_text_features(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        parts.append(features.float().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.config.embed_dim), dtype=np.float32)
