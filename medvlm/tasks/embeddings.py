"""The contrastive embeddings of a MedVLM model for lists of records and texts: what retrieval,
zero-shot classification and the nearest-neighbour report baseline compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..batch import BadItems
from ..processing import MedVLMProcessor, RecordDataset


def image_batches(records, processor: MedVLMProcessor, batch_size: int):
    """(B, C, H, W) pixel batches of the records' images, in order, as the processor prepares them."""
    loader = DataLoader(RecordDataset(records, processor), batch_size=batch_size,
                        collate_fn=lambda items: torch.stack([i["pixel_values"] for i in items]))
    yield from loader


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
    """The records whose image can be read and transformed; the others are named in `bad`.
    Records holding arrays (the built-in data) need no check."""
    def readable(record: dict) -> bool:
        image = record.get("image")
        if not isinstance(image, (str, Path)):
            return True
        return bad.attempt(f"{image} (study {record.get('study_id')})", lambda: processor.images([image]))[0]

    return [record for record in records if readable(record)]


@torch.no_grad()
def image_embeddings(model, processor: MedVLMProcessor, records, batch_size: int = 64) -> np.ndarray:
    """(N, E) L2-normalised image embeddings."""
    device = next(model.parameters()).device
    parts = [model.get_image_features(p.to(device)).float().cpu() for p in image_batches(records, processor, batch_size)]
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
