"""Image <-> report retrieval with the contrastive embeddings of a MedVLM model."""

from __future__ import annotations

import numpy as np

from ..metrics.retrieval import canonical_text, retrieval_metrics
from .embeddings import image_embeddings, text_embeddings


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
