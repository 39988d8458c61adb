"""Report-generation evaluation: generate for a split, score against references, and put the
model beside baselines computed on the same split (most frequent training report, a random
training report, the nearest training image's report)."""

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import EvalConfig
from .metrics.bootstrap import bootstrap_intervals
from .metrics.chexpert import clinical_efficacy, label_reports
from .metrics.nlg import compute_nlg
from .modeling import compile_on_any_device
from .processing import MedVLMProcessor, RecordDataset

EVAL_DIR = "eval"


def _image_batches(records, processor: MedVLMProcessor, batch_size: int):
    dataset = RecordDataset(records, processor)
    loader = DataLoader(dataset, batch_size=batch_size,
                        collate_fn=lambda items: torch.stack([i["pixel_values"] for i in items]))
    yield from loader


def generation_kwargs(cfg: EvalConfig) -> dict:
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams, "do_sample": False}
    if cfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
    if cfg.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = cfg.repetition_penalty
    if cfg.compile_decoding:
        kwargs.update(cache_implementation="static", compile_config=compile_on_any_device())
    return kwargs


@torch.no_grad()
def generate_reports(model, processor: MedVLMProcessor, records, batch_size: int = 32, **gen_kwargs) -> list[str]:
    device = next(model.parameters()).device
    reports = []
    for pixels in _image_batches(records, processor, batch_size):
        sequences = model.generate(pixel_values=pixels.to(device), **gen_kwargs)
        reports.extend(processor.decode(sequences))
    return reports


@torch.no_grad()
def image_embeddings(model, processor: MedVLMProcessor, records, batch_size: int = 64) -> np.ndarray:
    device = next(model.parameters()).device
    inner = model.model if hasattr(model, "model") else model
    parts = [inner.get_image_features(p.to(device)).float().cpu() for p in _image_batches(records, processor, batch_size)]
    return torch.cat(parts).numpy()  # (N, E), L2-normalised


def baseline_reports(train_records, test_records, seed: int = 0, nearest_neighbour=None) -> dict[str, list[str]]:
    """Reports a model must beat. `nearest_neighbour` = (train_embeddings, test_embeddings)."""
    train_texts = [r["text"] for r in train_records]
    most_frequent = Counter(train_texts).most_common(1)[0][0]
    rng = random.Random(seed)
    baselines = {
        "most_frequent": [most_frequent] * len(test_records),
        "random": [rng.choice(train_texts) for _ in test_records],
    }
    if nearest_neighbour is not None:
        train_emb, test_emb = nearest_neighbour
        nearest = (test_emb @ train_emb.T).argmax(axis=1)
        baselines["nearest_neighbour"] = [train_texts[i] for i in nearest]
    return baselines


def score_reports(references: list[str], hypotheses: list[str], uncertain: str = "negative",
                  with_meteor: bool = True) -> dict:
    """NLG metrics plus clinical efficacy from our labeler applied to both sides."""
    metrics = compute_nlg(references, hypotheses, include_meteor=with_meteor)
    metrics.update(clinical_efficacy(label_reports(references), label_reports(hypotheses), uncertain=uncertain))
    return metrics


def evaluate_model(model, processor, test_records, train_records, cfg: EvalConfig, out_dir: Path | None) -> dict:
    """Everything `eval.py` reports. Writes metrics.json, results.md, generations.jsonl and
    charts to `out_dir` when given; returns the flat metrics dict."""
    if cfg.max_samples:
        test_records = test_records[: cfg.max_samples]
    references = [r["text"] for r in test_records]
    generated = generate_reports(model, processor, test_records, cfg.batch_size, **generation_kwargs(cfg))
    ref_labels, gen_labels = label_reports(references), label_reports(generated)
    metrics = score_reports(references, generated, cfg.uncertain)
    intervals = bootstrap_intervals(references, generated, ref_labels, gen_labels,
                                    n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, uncertain=cfg.uncertain)
    metrics.update({f"ci.{k}" if not k.startswith("ci.") else k: v for k, v in intervals.items()})
    neighbours = (image_embeddings(model, processor, train_records, cfg.batch_size),
                  image_embeddings(model, processor, test_records, cfg.batch_size))
    for name, reports in baseline_reports(train_records, test_records, cfg.seed, neighbours).items():
        for key, value in score_reports(references, reports, cfg.uncertain).items():
            metrics[f"baselines.{name}.{key}"] = value
        baseline_labels = label_reports(reports)
        for key, value in bootstrap_intervals(references, reports, ref_labels, baseline_labels,
                                              n_resamples=cfg.bootstrap_resamples, seed=cfg.seed,
                                              uncertain=cfg.uncertain).items():
            if not key.startswith("ci."):
                metrics[f"baselines.{name}.ci.{key}"] = value
    metrics["num_samples"] = len(test_records)
    if out_dir is not None:
        from .results import write_results

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "generations.jsonl", "w") as f:
            for record, ref, gen, rl, gl in zip(test_records, references, generated, ref_labels, gen_labels):
                f.write(json.dumps({"id": record.get("study_id"), "reference": ref, "generated": gen,
                                    "reference_labels": _labels_json(rl), "generated_labels": _labels_json(gl)}) + "\n")
        write_results(metrics, out_dir, title="medvlm report generation")
    return metrics


def _labels_json(labels) -> list:
    return [None if np.isnan(v) else float(v) for v in labels]


def training_evaluator(processor, cfg: EvalConfig):
    """evaluate_fn for the Trainer: the same generation and scoring code, on a validation subset."""
    def evaluate_subset(model, records) -> dict:
        generated = generate_reports(model, processor, records, cfg.batch_size, **generation_kwargs(cfg))
        scores = score_reports([r["text"] for r in records], generated, cfg.uncertain, with_meteor=False)
        return {f"val_{k}": scores[k] for k in ("bleu_4", "cider", "ce_micro_f1", "ce_macro_f1") if k in scores}

    return evaluate_subset
