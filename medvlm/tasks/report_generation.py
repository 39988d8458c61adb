"""Report generation: generate for a split, score against the references, and put the model
beside baselines computed on the same split (the most frequent training report, a random
training report, the nearest training image's report)."""

from __future__ import annotations

import functools
import json
import random
from collections import Counter

import numpy as np
import torch

from ..config import EvalConfig
from ..metrics.bootstrap import bootstrap_intervals
from ..metrics.chexpert import change_accuracy, clinical_efficacy, label_generated_reports, label_reports
from ..metrics.field_scorers import field_scores
from ..metrics.nlg import compute_nlg
from ..modeling import compile_on_any_device
from ..modeling.inference_weights import for_generation
from ..processing import MedVLMProcessor, prior_report_text
from ..results import TaskResult
from .embeddings import image_batches, image_embeddings, on_device
from .reranking import Rerank, best_candidates, sampled_candidates


def generation_settings(max_new_tokens: int = 96, num_beams: int = 1, no_repeat_ngram_size: int = 0,
                        repetition_penalty: float = 1.0, do_sample: bool = False, top_k: int | None = None,
                        top_p: float | None = None, temperature: float | None = None,
                        compile_decoding: bool = False, rerank_samples: int = 0, rerank_temperature: float = 1.0,
                        rerank_by: str = "image_text", seed: int = 0) -> dict:
    """`generate` keyword arguments, as `eval.py` (from the eval section) and `medvlm generate`
    (from its options) both build them; settings at their neutral value are left out. With
    `rerank_samples`, "rerank" is for `reports_for_pixels`, not for `generate`."""
    kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": do_sample}
    optional = {"no_repeat_ngram_size": no_repeat_ngram_size or None, "top_k": top_k, "top_p": top_p,
                "temperature": temperature, "repetition_penalty": None if repetition_penalty == 1.0 else repetition_penalty}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if compile_decoding:  # static KV cache and a compiled decode step (README "Performance")
        kwargs.update(cache_implementation="static", compile_config=compile_on_any_device())
    if rerank_samples:
        kwargs["rerank"] = Rerank(rerank_samples, rerank_temperature, seed, rerank_by)
    return kwargs


def generation_kwargs(cfg: EvalConfig, rerank: bool = True) -> dict:
    """`generation_settings` of the run config's eval section (`rerank=False`: the usual report only)."""
    return generation_settings(cfg.max_new_tokens, cfg.num_beams, cfg.no_repeat_ngram_size, cfg.repetition_penalty,
                               compile_decoding=cfg.compile_decoding, rerank_samples=cfg.rerank_samples if rerank else 0,
                               rerank_temperature=cfg.rerank_temperature, rerank_by=cfg.rerank_by, seed=cfg.seed)


@torch.no_grad()
def reports_for_pixels(model, processor: MedVLMProcessor, images: torch.Tensor | dict, prompts: list[str] | None = None,
                       rerank: Rerank | None = None, **gen_kwargs) -> list[str]:
    """One report per row of a batch: pixels (B, C, S, S), or image inputs of `image_batches`
    (studies: pixel_values (B, K, C, S, S), image_views, image_is_prior). `prompts`: the prior
    reports a `prior_report` processor writes after, one per row. `rerank`: best of the usual
    report and sampled ones by the model's image-text score (`medvlm.tasks.reranking`)."""
    images = on_device(images if isinstance(images, dict) else {"pixel_values": images}, model)
    if prompts is None and processor.prior_report:  # it was trained to write after a prompt: an empty one
        prompts = [""] * len(images["pixel_values"])
    decode = functools.partial(_decode, model, processor, images, prompts, gen_kwargs)
    reports = decode()
    if rerank is None or not rerank.samples:
        return reports
    sampled = sampled_candidates(decode, rerank, images["pixel_values"].device)
    return best_candidates(model, processor, images, reports, sampled, rerank.by)


def _decode(model, processor: MedVLMProcessor, images: dict, prompts: list[str] | None, gen_kwargs: dict,
            **overrides) -> list[str]:
    """`generate` for the batch (rows in order, each row's `num_return_sequences` together), decoded."""
    kwargs = {**gen_kwargs, **overrides}
    if prompts is None:
        return processor.decode(model.generate(**images, **kwargs))
    prompt = processor.prompts(prompts, reserve=kwargs.get("max_new_tokens", 96))
    device = images["pixel_values"].device
    sequences = model.generate(**images, **{k: v.to(device) for k, v in prompt.items()}, **kwargs)
    return processor.decode(sequences, skip_prompt=prompt["input_ids"].shape[1])


def generate_reports(model, processor: MedVLMProcessor, records, batch_size: int = 32, **gen_kwargs) -> list[str]:
    """One report per record, in order (each after its prior's report for a `prior_report` processor)."""
    records, reports = list(records), []
    for start, images in zip(range(0, len(records), batch_size), image_batches(records, processor, batch_size)):
        batch = records[start:start + batch_size]
        prompts = [prior_report_text(r.get("prior")) for r in batch] if processor.prior_report else None
        reports += reports_for_pixels(model, processor, images, prompts, **gen_kwargs)
    return reports


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
    """NLG metrics plus clinical efficacy from our labeler applied to both sides (an empty
    hypothesis predicts nothing: `label_generated_reports`), change accuracy (`change_accuracy`:
    the reference's interval changes the hypothesis states too), and how many hypotheses were empty."""
    metrics = compute_nlg(references, hypotheses, include_meteor=with_meteor)
    metrics.update(clinical_efficacy(label_reports(references), label_generated_reports(hypotheses),
                                     uncertain=uncertain))
    metrics.update(change_accuracy(references, hypotheses))
    metrics["num_empty_reports"] = sum(not text.strip() for text in hypotheses)
    return metrics


def _scored_with_intervals(references, reports, ref_labels, report_labels, cfg: EvalConfig) -> tuple[dict, dict]:
    """(metrics, their bootstrap intervals keyed like the metrics) of `reports` against `references`."""
    metrics = score_reports(references, reports, cfg.uncertain)
    intervals = bootstrap_intervals(references, reports, ref_labels, report_labels,
                                    n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, uncertain=cfg.uncertain)
    return metrics, intervals


def evaluate_report_generation(model, processor, test_records, train_records, cfg: EvalConfig,
                               test_image_embeds: np.ndarray | None = None) -> TaskResult:
    """NLG and clinical-efficacy metrics with bootstrap intervals (`ci.*`), the same for every
    baseline (`baselines.<name>.*`); with `eval.field_scorers`, F1-CheXbert / RadGraph-F1 for the
    model and the nearest-neighbour baseline (`medvlm.metrics.field_scorers`); artefact `generations.jsonl`."""
    references = [r["text"] for r in test_records]
    generator = for_generation(model, cfg.weights)  # the model itself unless eval.weights is bf16/int8
    generated = generate_reports(generator, processor, test_records, cfg.batch_size, **generation_kwargs(cfg))
    ref_labels, gen_labels = label_reports(references), label_generated_reports(generated)
    metrics, intervals = _scored_with_intervals(references, generated, ref_labels, gen_labels, cfg)
    metrics.update({f"ci.{k}" if not k.startswith("ci.") else k: v for k, v in intervals.items()})
    if cfg.field_scorers:  # F1-CheXbert / RadGraph-F1 where installed with their weights, else "not computed: ..."
        metrics.update(field_scores(references, generated, cfg.field_scorers, cfg.field_scorer_weights))
    if test_image_embeds is None:
        test_image_embeds = image_embeddings(model, processor, test_records, cfg.batch_size)
    neighbours = (image_embeddings(model, processor, train_records, cfg.batch_size), test_image_embeds)
    for name, reports in baseline_reports(train_records, test_records, cfg.seed, neighbours).items():
        metrics.update(_as_baseline(name, references, reports, ref_labels, cfg))
        if cfg.field_scorers and name == "nearest_neighbour":  # the strongest baseline; the scorers are slow
            scores = field_scores(references, reports, cfg.field_scorers, cfg.field_scorer_weights)
            metrics.update({f"baselines.{name}.{k}": v for k, v in scores.items()})
    metrics.update(_shuffled_prior_ablation(generator, processor, test_records, references, ref_labels, cfg))
    if cfg.rerank_samples:  # the same model's usual report: what the reranking adds
        plain = generate_reports(generator, processor, test_records, cfg.batch_size, **generation_kwargs(cfg, False))
        metrics.update(_as_baseline("no_rerank", references, plain, ref_labels, cfg))
    metrics["num_samples"] = len(test_records)
    return TaskResult(metrics, {"generations.jsonl": _generations_jsonl(test_records, references, generated,
                                                                        ref_labels, gen_labels)})


def with_shuffled_priors(records: list[dict], seed: int = 0) -> list[dict]:
    """The records with each prior study replaced by the prior of another patient's record (a
    random cycle over the records that have one, so every prior is used once); records without a
    prior keep none. What a model that reads the prior must do worse on."""
    having = [i for i, r in enumerate(records) if r.get("prior")]
    random.Random(seed).shuffle(having)
    shuffled = list(records)
    for position, index in enumerate(having):
        for step in range(1, len(having)):  # the next record in the cycle of another patient
            donor = records[having[(position + step) % len(having)]]
            if donor.get("subject_id") != records[index].get("subject_id"):
                shuffled[index] = {**records[index], "prior": donor["prior"]}
                break
    return shuffled


def _shuffled_prior_ablation(model, processor, test_records, references, ref_labels, cfg: EvalConfig) -> dict:
    """`baselines.shuffled_prior.*`: the same model, each prior swapped for another patient's
    (nothing when no test record has a prior, or fewer than two do)."""
    if sum(bool(r.get("prior")) for r in test_records) < 2:
        return {}
    shuffled = with_shuffled_priors(test_records, cfg.seed)
    reports = generate_reports(model, processor, shuffled, cfg.batch_size, **generation_kwargs(cfg))
    return _as_baseline("shuffled_prior", references, reports, ref_labels, cfg)


def _as_baseline(name: str, references, reports, ref_labels, cfg: EvalConfig) -> dict:
    """`baselines.<name>.*` scores of `reports` and `baselines.<name>.ci.*` intervals."""
    scores, intervals = _scored_with_intervals(references, reports, ref_labels, label_generated_reports(reports), cfg)
    return {**{f"baselines.{name}.{k}": v for k, v in scores.items()},
            **{f"baselines.{name}.ci.{k}": v for k, v in intervals.items() if not k.startswith("ci.")}}


def _generations_jsonl(records, references, generated, ref_labels, gen_labels) -> str:
    rows = [{"id": record.get("study_id"), "reference": ref, "generated": gen,
             "reference_labels": _labels_json(rl), "generated_labels": _labels_json(gl)}
            for record, ref, gen, rl, gl in zip(records, references, generated, ref_labels, gen_labels)]
    return "".join(json.dumps(row) + "\n" for row in rows)


def _labels_json(labels) -> list:
    return [None if np.isnan(v) else float(v) for v in labels]


def training_evaluator(processor, cfg: EvalConfig):
    """evaluate_fn for the Trainer: the same generation and scoring code, on a validation subset,
    without eval.rerank_samples (it multiplies the decoding cost of every evaluation)."""
    def evaluate_subset(model, records) -> dict:
        generated = generate_reports(model, processor, records, cfg.batch_size, **generation_kwargs(cfg, False))
        scores = score_reports([r["text"] for r in records], generated, cfg.uncertain, with_meteor=False)
        return {f"val_{k}": scores[k] for k in ("bleu_4", "cider", "ce_micro_f1", "ce_macro_f1") if k in scores}

    return evaluate_subset
