"""VQA with the report model's own decoder: the question is a left-padded prompt
(`<s> question <sep>`), the answer is generated after it, and scoring uses normalised answers.
Closed questions are also answered by likelihood: each candidate answer seen in training is
scored by the model's teacher-forced log-probability after the prompt, and the best is picked."""

from __future__ import annotations

import json

import numpy as np
import torch

from ..metrics.vqa import closed_candidates, majority_answers, vqa_scores
from ..modeling.losses import IGNORE_INDEX
from ..results import TaskResult

ANSWER_TOKENS = 16  # answers are short; a cap keeps a confused model from writing a report
CANDIDATE_MIN_COUNT = 2  # a closed answer becomes a likelihood candidate once seen this often in training
BLANK_GRAY = 0.5  # the uniform image of the blank-image baseline, in [0, 1]


@torch.no_grad()
def answer_questions(model, processor, images, questions: list[str], batch_size: int = 32,
                     max_new_tokens: int = ANSWER_TOKENS, **generate_kwargs) -> list[str]:
    """Answers (decoded text after the prompt) for parallel lists of images (paths or arrays)
    and questions; greedy unless `generate_kwargs` say otherwise."""
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(questions), batch_size):
        pixels = processor.images(list(images[start:start + batch_size])).to(device)
        prompts = processor.prompts(list(questions[start:start + batch_size]), reserve=max_new_tokens)
        prompt = {k: v.to(device) for k, v in prompts.items()}
        sequences = model.generate(pixel_values=pixels, **prompt, max_new_tokens=max_new_tokens,
                                   do_sample=False, **generate_kwargs)
        answers.extend(processor.decode(sequences, skip_prompt=prompt["input_ids"].shape[1]))
    return answers


def answer_log_probs(model, pixel_values: torch.Tensor, text: dict, mean: bool = False) -> torch.Tensor:
    """(B,) log-probability of each row's labelled tokens, teacher-forced: `text` is what
    `processor.texts(answers, prompts=questions)` returns (the training format, whose labels are
    the answer tokens and the end token; prompt and padding are -100). Summed over those tokens,
    or with `mean` averaged over them."""
    out = model(pixel_values=pixel_values, input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                return_logits=True)
    log_probs = out.logits[:, :-1].float().log_softmax(-1)  # position t predicts token t + 1
    targets = text["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    per_token = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
    total = per_token.sum(1)
    return total / scored.sum(1).clamp(min=1) if mean else total


@torch.no_grad()
def answer_log_likelihoods(model, processor, images, questions: list[str], candidates: list[str],
                           batch_size: int = 32, mean: bool = False) -> torch.Tensor:
    """(Q, C) `answer_log_probs` of every candidate answer after every question, for parallel
    lists of images and questions: per batch of questions the images are read once, then one
    forward pass per candidate scores it for the whole batch."""
    device = next(model.parameters()).device
    scores = torch.empty(len(questions), len(candidates))
    for start in range(0, len(questions), batch_size):
        batch = list(questions[start:start + batch_size])
        pixels = processor.images(list(images[start:start + batch_size])).to(device)
        for j, candidate in enumerate(candidates):
            text = {k: v.to(device) for k, v in processor.texts([candidate] * len(batch), prompts=batch).items()}
            scores[start:start + len(batch), j] = answer_log_probs(model, pixels, text, mean).float().cpu()
    return scores


def pick_answers(model, processor, images, questions: list[str], candidates: list[str],
                 batch_size: int = 32, mean: bool = False) -> list[str]:
    """For each question, the candidate answer of the highest `answer_log_likelihoods`."""
    if not questions:
        return []
    scores = answer_log_likelihoods(model, processor, images, questions, candidates, batch_size, mean)
    return [candidates[i] for i in scores.argmax(dim=1).tolist()]


def _model_scores(model, processor, images, records, candidates: list[str], batch_size: int):
    """The model's `vqa_scores` on `records` read with `images`, plus `vqa_closed_acc_likelihood`
    (closed questions answered by `pick_answers` among `candidates`; None without closed questions
    or candidates). Returns (metrics, generated answers, {record index: picked answer})."""
    questions = [r["question"] for r in records]
    answers = [r["answer"] for r in records]
    types = [str(r.get("answer_type", "open")).lower() for r in records]
    predictions = answer_questions(model, processor, images, questions, batch_size)
    metrics = vqa_scores(predictions, answers, types)
    closed = [i for i, kind in enumerate(types) if kind == "closed"] if candidates else []
    picked = dict(zip(closed, pick_answers(model, processor, [images[i] for i in closed],
                                           [questions[i] for i in closed], candidates, batch_size)))
    metrics["vqa_closed_acc_likelihood"] = vqa_scores(
        list(picked.values()), [answers[i] for i in picked], ["closed"] * len(picked))["vqa_closed_acc"]
    return metrics, predictions, picked


def evaluate_vqa(model, processor, test_records, train_records, batch_size: int = 32) -> TaskResult:
    """The model's scores on the test questions: `vqa_closed_acc` (generated answers, exact match)
    and `vqa_closed_acc_likelihood` (the most likely of the closed training answers seen at
    least CANDIDATE_MIN_COUNT times, `vqa_closed_candidates` of them), `vqa_open_acc` (exact
    match), `vqa_open_recall` (LLaVA-Med's token recall), `vqa_open_f1` (MedGemma's token F1) and
    `vqa_overall_acc`; beside the baselines `baselines.majority.*` (most frequent training answer
    per answer type), `baselines.question_majority.*` (per question text) and
    `baselines.blank_image.*` (this model shown a uniform gray image: what it gets from the
    question alone). Artefact answers.jsonl: each question's generated and picked answer."""
    answers = [r["answer"] for r in test_records]
    types = [str(r.get("answer_type", "open")).lower() for r in test_records]
    train_types = [str(r.get("answer_type", "open")).lower() for r in train_records]
    candidates = closed_candidates([r["answer"] for r in train_records], train_types, CANDIDATE_MIN_COUNT)
    metrics, predictions, picked = _model_scores(model, processor, [r["image"] for r in test_records],
                                                 test_records, candidates, batch_size)
    guesses = majority_answers([r["question"] for r in train_records], [r["answer"] for r in train_records],
                               train_types, [r["question"] for r in test_records], types)
    baselines = {name: vqa_scores(guessed, answers, types) for name, guessed in guesses.items()}
    blank = [np.full((processor.image_size,) * 2, BLANK_GRAY, dtype=np.float32)] * len(test_records)
    baselines["blank_image"] = _model_scores(model, processor, blank, test_records, candidates, batch_size)[0]
    for name, scores in baselines.items():
        metrics.update({f"baselines.{name}.{k}": v for k, v in scores.items() if not k.startswith("vqa_num")})
    metrics["vqa_closed_candidates"] = len(candidates)
    metrics["num_samples"] = len(test_records)
    rows = [{"qid": record.get("qid"), "question": record["question"], "answer": record["answer"],
             "answer_type": record.get("answer_type"), "predicted": prediction, "picked": picked.get(i)}
            for i, (record, prediction) in enumerate(zip(test_records, predictions))]
    return TaskResult(metrics, {"answers.jsonl": "".join(json.dumps(row) + "\n" for row in rows)})


def vqa_training_evaluator(processor, batch_size: int = 32):
    """evaluate_fn for the Trainer on VQA data: answer accuracy, open token recall and F1 of the
    generated answers on the validation subset (the Trainer adds the validation loss)."""
    def evaluate_subset(model, records) -> dict:
        predictions = answer_questions(model, processor, [r["image"] for r in records],
                                       [r["question"] for r in records], batch_size)
        scores = vqa_scores(predictions, [r["answer"] for r in records],
                            [r.get("answer_type", "open") for r in records])
        return {f"val_{k}": v for k, v in scores.items() if k.endswith(("_acc", "_f1", "_recall")) and v is not None}

    return evaluate_subset
