"""VQA with the report model's own decoder: the question is a left-padded prompt
(`<s> question <sep>`), the answer is generated after it, and scoring uses normalised answers."""

from __future__ import annotations

import json

import torch

from ..metrics.vqa import majority_answers, vqa_scores
from ..results import TaskResult

ANSWER_TOKENS = 16  # answers are short; a cap keeps a confused model from writing a report


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


def evaluate_vqa(model, processor, test_records, train_records, batch_size: int = 32) -> TaskResult:
    """`vqa_closed_acc`, `vqa_open_acc`, `vqa_overall_acc`, `vqa_open_f1` on the test questions,
    beside the answer-only baselines `baselines.majority.*` (most frequent training answer per
    answer type) and `baselines.question_majority.*` (per question text); artefact answers.jsonl."""
    questions = [r["question"] for r in test_records]
    answers = [r["answer"] for r in test_records]
    types = [r.get("answer_type", "open") for r in test_records]
    predictions = answer_questions(model, processor, [r["image"] for r in test_records], questions, batch_size)
    metrics = vqa_scores(predictions, answers, types)
    baselines = majority_answers([r["question"] for r in train_records], [r["answer"] for r in train_records],
                                 [r.get("answer_type", "open") for r in train_records], questions, types)
    for name, guesses in baselines.items():
        for key, value in vqa_scores(guesses, answers, types).items():
            if not key.startswith("vqa_num"):
                metrics[f"baselines.{name}.{key}"] = value
    metrics["num_samples"] = len(test_records)
    rows = [{"qid": record.get("qid"), "question": record["question"], "answer": record["answer"],
             "answer_type": record.get("answer_type"), "predicted": prediction}
            for record, prediction in zip(test_records, predictions)]
    return TaskResult(metrics, {"answers.jsonl": "".join(json.dumps(row) + "\n" for row in rows)})


def vqa_training_evaluator(processor, batch_size: int = 32):
    """evaluate_fn for the Trainer on VQA data: answer accuracy on the validation subset."""
    def evaluate_subset(model, records) -> dict:
        predictions = answer_questions(model, processor, [r["image"] for r in records],
                                       [r["question"] for r in records], batch_size)
        scores = vqa_scores(predictions, [r["answer"] for r in records],
                            [r.get("answer_type", "open") for r in records])
        return {f"val_{k}": v for k, v in scores.items() if k.endswith(("_acc", "_f1")) and v is not None}

    return evaluate_subset
