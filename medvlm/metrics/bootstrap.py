"""Bootstrap 95% confidence intervals for every report-generation metric.

Items (study = one reference + one hypothesis + their labels) are resampled with replacement
``n_resamples`` times from a seeded generator; each metric is recomputed on every resample and
the interval is the (alpha/2, 1 - alpha/2) percentile pair (the percentile bootstrap).

Fast because every metric is reduced to per-item quantities computed once:
- BLEU-1..4: per-item n-gram statistics (hypothesis length, 'closest' reference length, guessed
  and matched n-grams), summed with the resample's multiplicities and turned into corpus BLEU
  with pycocoevalcap's own formula, smoothing constants and brevity penalty. Exact: the identity
  resample reproduces pycocoevalcap's corpus BLEU.
- ROUGE-L: pycocoevalcap's per-item scores; the corpus score is their mean, so exact.
- CIDEr-D: per-item scores computed once, with document frequencies (and log N) from the full
  reference set, then averaged per resample. An approximation: recomputing the document
  frequencies inside each resample would shift the idf weights a little.
- METEOR (only with ``include_meteor=True``; off by default because it starts a Java process
  and aligns every item once, which is slow): per-item METEOR statistics are aligned once, and
  each resample's corpus METEOR is METEOR's own aggregation of the resampled statistics. Exact.
- Clinical efficacy: per-item tp/fp/fn indicators per observation, summed per resample.
- Change accuracy: per-item counts of the reference's interval changes per kind and of those the
  hypothesis matched (`change_counts`, from change labels computed once), summed per resample.
"""

from __future__ import annotations

import logging

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

from ..errors import UserError
from .chexpert import (change_accuracy_from_counts, change_counts, change_labels, efficacy_from_counts, label_counts,
                       label_reports)
from .nlg import (MeteorProcess, _as_coco, cider_per_item, meteor_available, rouge_l_per_item)

logger = logging.getLogger(__name__)

_BLEU_N = 4


def bleu_item_statistics(gts: dict, res: dict) -> np.ndarray:
    """(N, 2 + 2*4) array per item: hypothesis length, effective reference length ('closest',
    as pycocoevalcap's Bleu uses), guessed n-grams (n=1..4), matched (clipped) n-grams."""
    rows = []
    for key in gts:
        cooked = cook_test(res[key][0], cook_refs(gts[key], n=_BLEU_N), n=_BLEU_N)
        testlen = cooked["testlen"]
        reflen = min((abs(length - testlen), length) for length in cooked["reflen"])[1]
        rows.append([testlen, reflen, *cooked["guess"], *cooked["correct"]])
    return np.asarray(rows, dtype=np.float64)


def corpus_bleu(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 from summed statistics, pycocoevalcap's arithmetic step for step.
    ``totals``: (..., 10) -> (..., 4)."""
    small, tiny = 1e-9, 1e-15
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2:2 + _BLEU_N], totals[..., 2 + _BLEU_N:]
    bleus = np.empty(totals.shape[:-1] + (_BLEU_N,))
    running = np.ones(totals.shape[:-1])
    for k in range(_BLEU_N):
        running = running * (correct[..., k] + tiny) / (guess[..., k] + small)
        bleus[..., k] = running ** (1.0 / (k + 1))
    ratio = (testlen + tiny) / (reflen + small)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleus * penalty[..., None]


def resample_weights(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, N) multiplicities: row r counts how often item i was drawn in resample r."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_items, size=(n_resamples, n_items))
    weights = np.zeros((n_resamples, n_items), dtype=np.float64)
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)
    return weights


def _interval(values, alpha: float) -> list[float] | None:
    values = np.asarray(values, dtype=float)
    if values.size == 0 or np.isnan(values).all():
        return None
    low, high = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(low), float(high)]


def _meteor_resamples(gts: dict, res: dict, weights: np.ndarray) -> np.ndarray | None:
    if not meteor_available():
        logger.warning("METEOR interval skipped: java not found on PATH")
        return None
    try:
        with MeteorProcess() as meteor:
            stats = [meteor.statistics(gts[i][0], res[i][0]) for i in gts]
            values = []
            for row in weights:
                drawn = [stats[i] for i in np.flatnonzero(row) for _ in range(int(row[i]))]
                values.append(meteor.aggregate(drawn)[0])
        return np.asarray(values)
    except Exception as error:
        logger.warning("METEOR interval skipped: %s", error)
        return None


def _change_intervals(references, hypotheses, ref_changes, gen_changes, weights: np.ndarray, alpha: float) -> dict:
    """Intervals of the change-accuracy scores (`change_count` excluded: a count, not a score)."""
    ref_changes = [change_labels(t) for t in references] if ref_changes is None else ref_changes
    gen_changes = [change_labels(t) for t in hypotheses] if gen_changes is None else gen_changes
    counts = change_counts(ref_changes, gen_changes)  # (N, 5, 2)
    resampled = np.tensordot(weights, counts.astype(np.float64), axes=(1, 0))  # (R, 5, 2)
    per_resample = [change_accuracy_from_counts(c) for c in resampled]
    return {key: _interval([m[key] for m in per_resample], alpha)
            for key in per_resample[0] if key != "change_count"}


def bootstrap_intervals(references: list[str], hypotheses: list[str], ref_labels=None, gen_labels=None,
                        n_resamples: int = 200, seed: int = 0, alpha: float = 0.05,
                        include_meteor: bool = False, uncertain: str = "negative", ref_changes=None,
                        gen_changes=None) -> dict:
    """Percentile-bootstrap confidence intervals, keyed like the point metrics.

    Returns ``{"bleu_1": [low, high], ..., "bleu_4", "rouge_l", "cider", "meteor" (only with
    include_meteor=True and Java present), "ce_precision", "ce_recall", "ce_micro_f1",
    "ce_macro_*", "ce_f1.<Observation>", ..., "change_accuracy", "change_accuracy.<kind>"}`` plus
    ``"ci.seed"``, ``"ci.n_resamples"`` and ``"ci.alpha"``. A metric that cannot be computed
    (CIDEr with every reference empty, a change kind no reference states) has no entry.
    ``ref_labels``/``gen_labels`` are (N, 14) arrays from ``label_reports``, ``ref_changes``/
    ``gen_changes`` lists of ``change_labels`` dicts; when omitted they are computed here.
    ``uncertain`` is passed to the clinical-efficacy scoring.
    The method and its one approximation (CIDEr's document frequencies) are described in the
    module docstring.
    """
    if n_resamples < 1:
        raise UserError(f"n_resamples must be at least 1, got {n_resamples}")
    gts, res = _as_coco(references, hypotheses)
    n = len(gts)
    weights = resample_weights(n, n_resamples, seed)  # (R, N)
    intervals: dict = {}

    bleu = corpus_bleu(weights @ bleu_item_statistics(gts, res))  # (R, 4)
    for k in range(_BLEU_N):
        intervals[f"bleu_{k + 1}"] = _interval(bleu[:, k], alpha)
    if include_meteor:
        meteor = _meteor_resamples(gts, res, weights)
        if meteor is not None:
            intervals["meteor"] = _interval(meteor, alpha)
    intervals["rouge_l"] = _interval(weights @ np.asarray(rouge_l_per_item(gts, res)) / n, alpha)
    cider = cider_per_item(gts, res)
    if cider is not None:
        intervals["cider"] = _interval(weights @ np.asarray(cider) / n, alpha)

    ref_labels = label_reports(references) if ref_labels is None else ref_labels
    gen_labels = label_reports(hypotheses) if gen_labels is None else gen_labels
    counts = label_counts(ref_labels, gen_labels, uncertain)  # (N, 14, 3)
    resampled = np.tensordot(weights, counts.astype(np.float64), axes=(1, 0))  # (R, 14, 3)
    per_resample = [efficacy_from_counts(c) for c in resampled]
    for key in per_resample[0]:
        intervals[key] = _interval([m[key] for m in per_resample], alpha)
    intervals.update(_change_intervals(references, hypotheses, ref_changes, gen_changes, weights, alpha))

    intervals = {k: v for k, v in intervals.items() if v is not None}
    intervals.update({"ci.seed": int(seed), "ci.n_resamples": int(n_resamples), "ci.alpha": float(alpha)})
    return intervals

