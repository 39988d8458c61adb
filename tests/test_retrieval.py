"""Retrieval R@K (duplicates are hits, chance level exact), AUROC (exact, ties), zero-shot
classification and `medvlm retrieve` on a tiny model."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from medvlm.cli import main
from medvlm.errors import UserError
from medvlm.metrics.classification import auroc, auroc_per_label, binarize_labels
from medvlm.metrics.retrieval import random_recall_at_k, recall_at_k, retrieval_metrics


def pairwise_auroc(scores, targets):
    pos = [s for s, t in zip(scores, targets) if t]
    neg = [s for s, t in zip(scores, targets) if not t]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def test_auroc_is_exact_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 4, 30).astype(float)  # many ties
        targets = rng.random(30) < 0.4
        assert auroc(scores, targets) == pytest.approx(pairwise_auroc(scores, targets))
    assert auroc([0.1, 0.9], [0, 1]) == 1.0 and auroc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_auroc_per_label_skips_single_class_labels_and_ignores_nan():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.5], [0.8, 0.3, 0.1]])
    targets = np.array([[1, 0, np.nan], [0, 0, 1], [1, 0, 0]])
    out = auroc_per_label(scores, targets, ["a", "b", "c"], prefix="auroc")
    assert out["auroc.a"] == 1.0 and out["auroc.b"] is None and out["auroc.c"] == 1.0
    assert out["auroc_mean"] == 1.0 and out["auroc_skipped"] == ["b"] and out["auroc_num_labels"] == 2


def test_binarize_labels_policies():
    labels = [[1.0, 0.0, -1.0, np.nan]]
    assert binarize_labels(labels).tolist() == [[1, 0, 0, 0]]
    assert binarize_labels(labels, "positive").tolist() == [[1, 0, 1, 0]]
    assert np.isnan(binarize_labels(labels, "ignore")[0, 2])
    with pytest.raises(UserError, match="uncertain must be"):
        binarize_labels(labels, "maybe")


def test_recall_at_k_counts_any_relevant_candidate():
    similarity = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    relevant = np.array([[False, True, False], [True, False, False]])
    assert recall_at_k(similarity, relevant, ks=(1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}


def test_random_recall_matches_enumeration():
    relevant = np.array([[True, False, False, True, False], [False, False, True, False, False]])
    expected = {}
    for k in (1, 2, 3):
        hits = [np.mean([any(row[list(order[:k])]) for order in itertools.permutations(range(5))])
                for row in relevant]
        expected[k] = float(np.mean(hits))
    assert random_recall_at_k(relevant, ks=(1, 2, 3)) == pytest.approx(expected)


def test_identical_reports_count_as_hits():
    texts = ["No acute process.", "Left effusion.", "no acute  process.", "Right pneumothorax."]
    image = np.eye(4)
    text = np.eye(4)
    text[2] = text[0]  # identical reports embed identically
    image[2] = np.array([1.0, 0, 0, 0])  # image 2 sits on the shared normal report
    out = retrieval_metrics(image, text, texts, ks=(1,))
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0  # 4 image queries, 3 distinct report queries
    assert out["retrieval_distinct_reports"] == 3
    assert out["baselines.random.i2t_r1"] == pytest.approx(1 / 3)  # one relevant of 3 distinct reports
    # per distinct report: the normal one has 2 relevant images of 4, the others 1 of 4
    assert out["baselines.random.t2i_r1"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)


def test_zero_shot_and_retrieval_on_a_tiny_model(pretrained):
    from medvlm.data.synthetic import synthetic_records
    from medvlm.modeling import MedVLMForConditionalGeneration
    from medvlm.processing import MedVLMProcessor
    from medvlm.tasks.retrieval import evaluate_retrieval
    from medvlm.tasks.zero_shot import evaluate_zero_shot

    model = MedVLMForConditionalGeneration.from_pretrained(str(pretrained)).eval()
    processor = MedVLMProcessor.from_pretrained(pretrained)
    records = synthetic_records(24, seed=5, image_size=32)
    retrieval = evaluate_retrieval(model, processor, records, batch_size=8)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "baselines.random.i2t_r5"):
        assert 0.0 <= retrieval[key] <= 1.0, key
    zero_shot = evaluate_zero_shot(model, processor, records, batch_size=8)
    assert "zs_auroc.Pleural Effusion" in zero_shot and "Pneumonia" in zero_shot["zs_auroc_skipped"]
    assert zero_shot["zs_auroc_mean"] is None or 0.0 <= zero_shot["zs_auroc_mean"] <= 1.0


def test_retrieve_command(pretrained, tmp_path, capsys):
    pixels = (np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    gallery = tmp_path / "gallery.txt"
    gallery.write_text("No acute process.\nLeft pleural effusion.\nNo acute process.\n")
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    capsys.readouterr()
    assert main(["retrieve", "--checkpoint", str(pretrained), "--image", *images, "--gallery", str(gallery)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == images and len(rows[0]["reports"]) == 2  # distinct reports only
    assert main(["retrieve", "--checkpoint", str(pretrained), "--image", *images, "--text", "Left effusion."]) == 0
    ranked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["rank"] for r in ranked) == [1, 2]
    assert main(["retrieve", "--checkpoint", str(pretrained), "--image", images[0], "--top-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["reports"]) == 3  # the training reports
