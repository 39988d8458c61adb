"""Image <-> report retrieval with the contrastive embeddings of a MedVLM model."""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation import image_embeddings
from ..metrics.retrieval import canonical_text, retrieval_metrics


@torch.no_grad()
def text_embeddings(model, processor, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, E) L2-normalised report embeddings, tokenised exactly as in training."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = processor.texts(list(texts[start:start + batch_size]))
        features = model.model.get_text_features(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        parts.append(features.float().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.config.embed_dim), dtype=np.float32)


def evaluate_retrieval(model, processor, records, batch_size: int = 64, image_embeds: np.ndarray | None = None) -> dict:
    """`i2t_r1/5/10`, `t2i_r1/5/10` and their random-ranking expectations over `records`
    (a retrieved report identical to the reference counts as a hit; see metrics.retrieval)."""
    texts = [r["text"] for r in records]
    if image_embeds is None:
        image_embeds = image_embeddings(model, processor, records, batch_size)
    return retrieval_metrics(image_embeds, text_embeddings(model, processor, texts, batch_size), texts)


def rank_reports(image_embeds: np.ndarray, gallery_texts: list[str], gallery_embeds: np.ndarray,
                 top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each image, the `top_k` most similar *distinct* gallery reports with their cosine scores."""
    keys, first = {}, []
    for i, text in enumerate(gallery_texts):
        if canonical_text(text) not in keys:
            keys[canonical_text(text)] = i
            first.append(i)
    scores = image_embeds @ gallery_embeds[first].T  # (Q, D)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return [[(gallery_texts[first[j]], float(scores[q, j])) for j in row] for q, row in enumerate(order)]
