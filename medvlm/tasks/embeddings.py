"""The contrastive embeddings of a MedVLM model for lists of records and texts: what retrieval,
zero-shot classification and the nearest-neighbour report baseline compare."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..processing import MedVLMProcessor, RecordDataset


def image_batches(records, processor: MedVLMProcessor, batch_size: int):
    """(B, C, H, W) pixel batches of the records' images, in order, as the processor prepares them."""
    loader = DataLoader(RecordDataset(records, processor), batch_size=batch_size,
                        collate_fn=lambda items: torch.stack([i["pixel_values"] for i in items]))
    yield from loader


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
