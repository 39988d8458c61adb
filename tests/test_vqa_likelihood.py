"""VQA scoring beyond exact match: open token recall (LLaVA-Med) and token F1 (MedGemma) by hand,
the closed candidates, likelihood scoring of closed answers against a direct teacher-forced
computation, and the metrics `evaluate_vqa` reports (with the blank-image baseline)."""

import json

import numpy as np
import pytest
import torch

from medvlm.metrics.vqa import closed_candidates, token_f1, token_recall, vqa_scores


def test_token_recall_and_f1_by_hand():
    # reference "left upper lobe" (3 words), prediction "the left lobe" -> "left lobe": 2 shared
    assert token_recall("the left lobe", "left upper lobe") == pytest.approx(2 / 3)
    assert token_f1("the left lobe", "left upper lobe") == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))  # 0.8
    # extra words cost recall nothing, F1 its precision: 1 of 1 reference word, 1 of 4 predicted
    assert token_recall("a mass in the right lung", "mass") == 1.0
    assert token_f1("a mass in the right lung", "mass") == pytest.approx(2 * 0.25 * 1.0 / 1.25)  # 0.4
    assert token_recall("left left", "left right") == 0.5  # multisets: one "left" to match
    assert token_recall("Two", "2") == 1.0  # normalised first
    assert token_recall("liver", "spleen") == 0.0 and token_f1("liver", "spleen") == 0.0
    assert token_recall("", "") == 1.0 and token_recall("x", "the") == 0.0  # "the" normalises to nothing


def test_vqa_scores_report_open_recall_beside_exact_match_and_f1():
    scores = vqa_scores(["yes", "left lung", "mass in the liver", "kidney"],
                        ["no", "left upper lung", "liver", "kidney"], ["closed", "open", "open", "open"])
    assert scores["vqa_closed_acc"] == 0.0
    assert scores["vqa_open_acc"] == pytest.approx(1 / 3)
    assert scores["vqa_open_recall"] == pytest.approx((2 / 3 + 1.0 + 1.0) / 3)
    assert scores["vqa_open_f1"] == pytest.approx((0.8 + token_f1("mass in the liver", "liver") + 1.0) / 3)
    assert vqa_scores(["yes"], ["yes"], ["closed"])["vqa_open_recall"] is None


def test_closed_candidates_are_frequent_closed_answers_in_their_usual_spelling():
    answers = ["Yes", "yes", "yes", "No", "no", "left", "Left", "left", "axial", "brain", "brain", "pa", "PA"]
    types = ["closed"] * 9 + ["open", "open", "CLOSED", "closed"]
    assert closed_candidates(answers, types, min_count=2) == ["yes", "left", "No", "pa"]
    assert closed_candidates(answers, types, min_count=1) == ["yes", "left", "No", "pa", "axial"]
    assert closed_candidates(answers, types, min_count=4) == []


QUESTIONS = ["is there a pleural effusion?", "which side is the opacity on?", "is the heart enlarged?"]
CANDIDATES = ["yes", "no", "left", "right lower lobe"]


@pytest.fixture(scope="module")
def tiny(pretrained):
    from medvlm.runs import load_trained

    model, processor, _ = load_trained(pretrained)
    model.config.label_smoothing = 0.0  # the caption loss is then exactly the mean negative log-likelihood
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in QUESTIONS]
    return model, processor, images


def direct_log_prob(model, processor, image, question, answer) -> tuple[float, int]:
    """One (image, question, answer) in the training format: -caption_loss x the answer tokens it averages."""
    batch = processor(images=[image], text=[answer], prompts=[question])
    with torch.no_grad():
        loss = float(model(**batch).caption_loss)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    return -loss * scored, scored


def test_likelihood_scores_match_a_direct_teacher_forced_computation(tiny):
    from medvlm.tasks.vqa import answer_log_likelihoods, pick_answers

    model, processor, images = tiny
    # batch_size 2: questions of different lengths share a padded batch, and the last batch is short
    summed = answer_log_likelihoods(model, processor, images, QUESTIONS, CANDIDATES, batch_size=2)
    mean = answer_log_likelihoods(model, processor, images, QUESTIONS, CANDIDATES, batch_size=2, mean=True)
    assert summed.shape == (len(QUESTIONS), len(CANDIDATES))
    direct = torch.tensor([[direct_log_prob(model, processor, im, q, c)[0] for c in CANDIDATES]
                           for im, q in zip(images, QUESTIONS)])
    counts = torch.tensor([[direct_log_prob(model, processor, im, q, c)[1] for c in CANDIDATES]
                           for im, q in zip(images, QUESTIONS)], dtype=torch.float)
    assert torch.allclose(summed, direct, atol=1e-4)
    assert torch.allclose(mean, direct / counts, atol=1e-5)
    assert (summed < 0).all()
    picked = pick_answers(model, processor, images, QUESTIONS, CANDIDATES, batch_size=2)
    assert picked == [CANDIDATES[i] for i in direct.argmax(dim=1).tolist()]
    assert pick_answers(model, processor, [], [], CANDIDATES) == []


def test_evaluate_vqa_reports_likelihood_recall_and_baselines(tiny):
    from medvlm.tasks.vqa import evaluate_vqa

    model, processor, images = tiny
    rows = [("is there a pleural effusion?", "yes", "closed"), ("is there a pleural effusion?", "no", "closed"),
            ("which side?", "left", "closed"), ("what organ is this?", "left lung", "open")]
    train = [{"image": images[0], "question": q, "answer": a, "answer_type": t} for q, a, t in rows * 2]
    test = [{"image": images[i % 3], "question": q, "answer": a, "answer_type": t, "qid": str(i)}
            for i, (q, a, t) in enumerate(rows)]
    result = evaluate_vqa(model, processor, test, train, batch_size=2)
    m = result.metrics
    assert m["vqa_closed_candidates"] == 3  # yes, no, left (each twice); the open answer is no candidate
    picked = [json.loads(line)["picked"] for line in result.artefacts["answers.jsonl"].splitlines()]
    assert picked[3] is None and set(picked[:3]) <= {"yes", "no", "left"}
    assert m["vqa_closed_acc_likelihood"] == pytest.approx(np.mean([p == a for p, (_, a, _) in zip(picked[:3], rows)]))
    for key in ("vqa_closed_acc", "vqa_open_acc", "vqa_open_recall", "vqa_open_f1", "vqa_overall_acc"):
        assert key in m and all(f"baselines.{name}.{key}" in m
                                for name in ("majority", "question_majority", "blank_image"))
    assert "baselines.blank_image.vqa_closed_acc_likelihood" in m and m["num_samples"] == 4
    assert "baselines.majority.vqa_num_open" not in m
