"""Best-of-N report decoding: each image gets its usual report (greedy or beam) plus `samples`
sampled ones, and one of these candidates is kept, chosen one of two ways (`Rerank.by`):

- ``image_text``: the candidate whose text embedding is closest to the image embedding, the
  model's own contrastive score (as CoCa ranks captions);
- ``label_consensus``: minimum-Bayes-risk decoding with a clinical utility. The candidate whose
  CheXpert-style findings (the labeler's positive labels) agree best, by F1, with those of the
  other candidates: the findings most of the model's own samples state. The greedy decoder
  tends to settle early on the commonest phrasing of a finding; the consensus of samples does
  not. Its utility is the labeler that clinical efficacy is scored with, so a gain in CE F1 is
  partly by construction: read it beside NLG scores and the un-reranked report.

Ties go to the earlier candidate, so the usual report wins when nothing beats it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from ..metrics.chexpert import label_generated_reports
from .embeddings import text_embeddings

RerankBy = Literal["image_text", "label_consensus"]


@dataclass(frozen=True)
class Rerank:
    """eval.rerank_samples / rerank_temperature / rerank_by; `seed` makes the samples repeatable."""
    samples: int
    temperature: float = 1.0
    seed: int = 0
    by: RerankBy = "image_text"


def sampled_candidates(decode: Callable[..., list[str]], rerank: Rerank, device: torch.device) -> list[str]:
    """`decode(**generate_kwargs)` with `rerank.samples` sampled reports per row, in row order
    (B * samples), from a generator seeded by `rerank.seed` that leaves the global one as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rerank.seed)
        return decode(do_sample=True, num_beams=1, temperature=rerank.temperature, top_k=0, top_p=1.0,
                      num_return_sequences=rerank.samples)


def best_candidates(model, processor, images: dict, first: list[str], sampled: list[str], by: RerankBy) -> list[str]:
    """Per row, the candidate kept: its `first` report or one of its sampled ones (row order)."""
    per_row = len(sampled) // len(first)
    candidates = [[report, *sampled[i * per_row:(i + 1) * per_row]] for i, report in enumerate(first)]
    if by == "label_consensus":
        return [row[label_consensus(row)] for row in candidates]
    return best_by_image_text_score(model, processor, images, candidates)


def label_consensus(candidates: list[str]) -> int:
    """Index of the candidate whose positive findings have the highest mean F1 against every
    other candidate's (two reports stating no finding agree fully)."""
    positive = (np.asarray(label_generated_reports(candidates)) == 1).astype(float)  # (n, 14)
    both = positive.sum(1)[:, None] + positive.sum(1)[None, :]
    f1 = np.where(both > 0, 2 * (positive @ positive.T) / np.maximum(both, 1), 1.0)  # (n, n)
    np.fill_diagonal(f1, 0.0)
    return int(np.argmax(f1.sum(1)))  # the first of equals


@torch.no_grad()
def best_by_image_text_score(model, processor, images: dict, candidates: list[list[str]]) -> list[str]:
    """Per row the candidate with the highest cosine similarity between its text embedding and
    the image embedding of `images` (model inputs)."""
    image = model.get_image_features(**images).float().cpu()  # (B, E), normalised
    flat = [text for row in candidates for text in row]  # every row has 1 + samples candidates
    text = torch.from_numpy(text_embeddings(model, processor, flat)).view(len(candidates), len(candidates[0]), -1)
    best = torch.einsum("be,bne->bn", image, text).argmax(dim=1)  # (B,)
    return [row[int(i)] for row, i in zip(candidates, best)]
