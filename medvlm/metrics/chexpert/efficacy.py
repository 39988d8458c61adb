"""Clinical efficacy (CE): precision, recall and F1 of the CheXpert labels of generated reports
against those of their references (the labels come from `labeler.label_reports`)."""

from __future__ import annotations

import numpy as np

from ...errors import UserError
from ...observations import CHEXPERT_OBSERVATIONS
from .labeler import POSITIVE, UNCERTAIN, label_reports


def label_generated_reports(texts) -> np.ndarray:
    """`label_reports` for the generated side of a comparison: an empty (or blank) generated
    report is "no prediction", every observation NaN, never CheXpert's "No Finding" (which the
    labeler gives a report that mentions nothing, and which would score an empty generation as
    correct on every normal study)."""
    texts = list(texts)
    labels = label_reports(texts)
    empty = [i for i, text in enumerate(texts) if not str(text).strip()]
    labels[empty] = np.nan
    return labels


def _binary(labels, uncertain: str) -> np.ndarray:
    """Positive = 1; uncertain (-1) mapped per `uncertain`; 0 and NaN negative. "ignore" marks
    uncertain entries with -1 so they can be dropped pairwise."""
    labels = np.asarray(labels, dtype=float)
    out = (labels == POSITIVE).astype(np.int8)
    if uncertain == "positive":
        out[labels == UNCERTAIN] = 1
    elif uncertain == "ignore":
        out[labels == UNCERTAIN] = -1
    elif uncertain != "negative":
        raise UserError(f"uncertain must be 'negative', 'positive' or 'ignore', not {uncertain!r}")
    return out


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def label_counts(ref_labels, gen_labels, uncertain: str = "negative") -> np.ndarray:
    """Per-item, per-observation (tp, fp, fn) indicators: int array (N, 14, 3). With
    ``uncertain="ignore"`` a pair where either side is uncertain counts nowhere."""
    ref = _binary(ref_labels, uncertain)
    gen = _binary(gen_labels, uncertain)
    if ref.shape != gen.shape or ref.ndim != 2 or ref.shape[1] != len(CHEXPERT_OBSERVATIONS):
        raise ValueError(f"label arrays must both be (N, {len(CHEXPERT_OBSERVATIONS)}), "
                         f"got {ref.shape} and {gen.shape}")
    valid = (ref >= 0) & (gen >= 0)
    tp = (ref == 1) & (gen == 1) & valid
    fp = (ref == 0) & (gen == 1) & valid
    fn = (ref == 1) & (gen == 0) & valid
    return np.stack([tp, fp, fn], axis=-1).astype(np.int64)


def efficacy_from_counts(counts: np.ndarray) -> dict:
    """CE scores from summed (14, 3) tp/fp/fn counts; see `clinical_efficacy`."""
    metrics = {}
    tp, fp, fn = (counts[:, k].sum() for k in range(3))
    metrics["ce_precision"], metrics["ce_recall"], metrics["ce_micro_f1"] = _prf(tp, fp, fn)
    per_label = [_prf(*counts[j]) for j in range(len(CHEXPERT_OBSERVATIONS))]
    active = [j for j in range(len(CHEXPERT_OBSERVATIONS)) if counts[j].sum() > 0]
    for k, key in enumerate(("ce_macro_precision", "ce_macro_recall", "ce_macro_f1")):
        metrics[key] = float(np.mean([per_label[j][k] for j in active])) if active else 0.0
    for j, name in enumerate(CHEXPERT_OBSERVATIONS):
        precision, recall, f1 = per_label[j]
        metrics[f"ce_precision.{name}"] = precision
        metrics[f"ce_recall.{name}"] = recall
        metrics[f"ce_f1.{name}"] = f1
    return {k: float(v) for k, v in metrics.items()}


def clinical_efficacy(ref_labels, gen_labels, uncertain: str = "negative") -> dict:
    """Clinical efficacy: how well the labels of generated reports match those of the references.

    Both inputs are (N, 14) arrays from `label_reports`. A label counts as positive when it is 1;
    an uncertain -1 counts as negative (``uncertain="negative"``, the R2Gen-era convention),
    positive (``"positive"``), or the pair is left out for that observation when either side is
    uncertain (``"ignore"``); NaN (not mentioned) is negative. All 14 observations are scored,
    No Finding included (as in the CheXpert-based CE of R2Gen and later papers).

    Returns ``ce_precision``, ``ce_recall``, ``ce_micro_f1`` (micro: tp/fp/fn summed over all
    observations), ``ce_macro_precision``, ``ce_macro_recall``, ``ce_macro_f1`` and per
    observation ``ce_precision.<name>``, ``ce_recall.<name>``, ``ce_f1.<name>``.

    Zero divisions give 0. The macro averages run over the observations that are positive in at
    least one reference or one generated report (tp + fp + fn > 0); an observation absent from
    both sides has no defined score and is left out rather than counted as 0 (or as 1). Its
    per-label entries are still written, as 0.
    """
    return efficacy_from_counts(label_counts(ref_labels, gen_labels, uncertain).sum(axis=0))
