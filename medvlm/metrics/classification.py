"""Multi-label classification: exact AUROC per label and their mean (numpy only).

AUROC is the Mann-Whitney statistic: the probability that a random positive scores above a
random negative, ties counting one half. It is computed from average ranks, so it is exact
(no threshold grid) and handles tied scores the way scikit-learn's `roc_auc_score` does.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def auroc(scores, targets) -> float:
    """AUROC of `scores` (N,) against binary `targets` (N,) (1 positive, 0 negative).
    NaN when only one class is present (the area is undefined)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    n_pos = int(targets.sum())
    n_neg = len(targets) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank (1-based) within each run of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + 1 + end)
    rank_sum = ranks[targets].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binarize_labels(labels, uncertain: str = "negative") -> np.ndarray:
    """CheXpert-style label matrix (N, L) -> {0, 1} with NaN where a label is ignored.

    Not mentioned (NaN) counts as negative (no such finding); uncertain (-1) follows
    `uncertain`: "negative", "positive" or "ignore" (left NaN)."""
    labels = np.asarray(labels, dtype=np.float64)
    out = np.where(np.isnan(labels), 0.0, labels)
    if uncertain == "negative":
        out = np.where(out == -1, 0.0, out)
    elif uncertain == "positive":
        out = np.where(out == -1, 1.0, out)
    elif uncertain == "ignore":
        out = np.where(out == -1, np.nan, out)
    else:
        raise UserError(f"uncertain must be 'negative', 'positive' or 'ignore', got {uncertain!r}")
    return out


def auroc_per_label(scores, targets, names, prefix: str = "auroc") -> dict:
    """Per-label AUROC and their mean over the labels where it is defined.

    scores: (N, L) any monotone scores (logits or probabilities); targets: (N, L) in {0, 1},
    NaN = ignore that entry. Labels whose (non-ignored) targets hold a single class are left
    out of the mean and reported as None; `<prefix>_skipped` lists them.
    Returns {"<prefix>.<name>": value, "<prefix>_mean": mean, "<prefix>_num_labels": count, ...}.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.shape != targets.shape or scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, {len(names)})")
    out, defined, skipped = {}, [], []
    for j, name in enumerate(names):
        keep = ~np.isnan(targets[:, j])
        value = auroc(scores[keep, j], targets[keep, j])
        if np.isnan(value):
            out[f"{prefix}.{name}"] = None
            skipped.append(name)
        else:
            out[f"{prefix}.{name}"] = value
            defined.append(value)
    out[f"{prefix}_mean"] = float(np.mean(defined)) if defined else None
    out[f"{prefix}_num_labels"] = len(defined)
    out[f"{prefix}_skipped"] = skipped
    return out
