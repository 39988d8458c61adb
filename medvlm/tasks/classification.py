"""CheXNet glue: label order per dataset, training targets and batches, AUROC evaluation."""

from __future__ import annotations

import csv
import io

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..metrics.classification import auroc_per_label, binarize_labels
from ..observations import CHEXPERT_OBSERVATIONS
from ..processing import RecordDataset
from ..results import TaskResult


def label_names_for(dataset: str) -> list[str]:
    """The order of `labels` in a dataset's records: ChestX-ray14's own 14, else CheXpert's 14."""
    if dataset == "chestxray14":
        from ..data.chestxray14 import CHESTXRAY14_LABELS

        return list(CHESTXRAY14_LABELS)
    return list(CHEXPERT_OBSERVATIONS)


def targets_from_labels(raw: np.ndarray, uncertain: str = "negative") -> np.ndarray:
    """(N, L) raw labels (1, 0, -1, NaN) -> targets in {0, 1} with NaN = ignored: not mentioned
    counts as negative (see `binarize_labels`), but a row with no label at all (a record without
    labels) is ignored as a whole."""
    raw = np.asarray(raw, dtype=np.float64)
    targets = binarize_labels(raw, uncertain)
    targets[np.isnan(raw).all(axis=1)] = np.nan
    return targets


def label_matrix(records, num_labels: int, uncertain: str = "negative") -> np.ndarray:
    """(N, L) training/evaluation targets of records (see `targets_from_labels`)."""
    rows = [r["labels"] if r.get("labels") is not None else [np.nan] * num_labels for r in records]
    return targets_from_labels(np.asarray(rows, dtype=np.float64).reshape(len(rows), num_labels), uncertain)


def positive_fraction(records, num_labels: int, uncertain: str = "negative") -> list[float]:
    """Training-set share of positives per label (the CheXNet class weights; 0 where never seen)."""
    matrix = label_matrix(records, num_labels, uncertain)
    known = ~np.isnan(matrix)
    positives = np.where(known, matrix, 0).sum(axis=0)
    return [float(p / k) if k else 0.0 for p, k in zip(positives, known.sum(axis=0))]


class LabelCollator:
    """RecordDataset items -> {"pixel_values": (B, C, S, S), "labels": (B, L)} with
    labels binarised like `label_matrix` (NaN entries are ignored by the loss)."""

    def __init__(self, num_labels: int, uncertain: str = "negative"):
        self.num_labels, self.uncertain = num_labels, uncertain

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor]:
        items = [item for item in items if item is not None]
        if not items:
            return {}
        missing = torch.full((self.num_labels,), float("nan"))
        raw = torch.stack([item.get("labels", missing) for item in items]).numpy()  # (B, L)
        return {"pixel_values": torch.stack([item["pixel_values"] for item in items]),
                "labels": torch.from_numpy(targets_from_labels(raw, self.uncertain)).float()}


@torch.no_grad()
def predict_probabilities(model, processor, records, batch_size: int = 64) -> np.ndarray:
    """(N, L) sigmoid probabilities."""
    device = next(model.parameters()).device
    loader = DataLoader(RecordDataset(records, processor, studies=False), batch_size=batch_size,
                        collate_fn=lambda items: torch.stack([i["pixel_values"] for i in items]))
    was_training = model.training
    model.eval()
    parts = [torch.sigmoid(model(pixel_values=pixels.to(device)).logits).float().cpu() for pixels in loader]
    model.train(was_training)
    return torch.cat(parts).numpy()


def evaluate_classifier(model, processor, records, batch_size: int = 64, uncertain: str = "negative") -> TaskResult:
    """`auroc.<label>` and `auroc_mean` (labels with one class on the split are skipped and listed
    in `auroc_skipped`), the chance level `baselines.random.auroc_mean` = 0.5; artefact
    predictions.csv."""
    names = list(model.config.label_names)
    records = [r for r in records if r.get("labels") is not None]
    probabilities = predict_probabilities(model, processor, records, batch_size)
    metrics = auroc_per_label(probabilities, label_matrix(records, len(names), uncertain), names, prefix="auroc")
    metrics["baselines.random.auroc_mean"] = 0.5
    metrics["num_samples"] = len(records)
    return TaskResult(metrics, {"predictions.csv": _predictions_csv(records, names, probabilities)})


def _predictions_csv(records, names: list[str], probabilities: np.ndarray) -> str:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["study_id", *names])
    for record, row in zip(records, probabilities):
        writer.writerow([record.get("study_id"), *[f"{p:.5f}" for p in row]])
    return table.getvalue()


def classifier_training_evaluator(processor, batch_size: int = 64, uncertain: str = "negative"):
    """evaluate_fn for the Trainer: mean AUROC on the validation subset."""
    def evaluate_subset(model, records) -> dict:
        metrics = evaluate_classifier(model, processor, records, batch_size, uncertain).metrics
        return {"val_auroc_mean": metrics["auroc_mean"]} if metrics.get("auroc_mean") is not None else {}

    return evaluate_subset
