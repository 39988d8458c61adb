"""Bootstrap intervals: exact where promised, seeded, and fast."""

import random
import shutil
import time

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from medvlm.errors import UserError
from medvlm.metrics.bootstrap import (bleu_item_statistics, bootstrap_intervals, corpus_bleu, resample_weights)
from medvlm.metrics.chexpert import label_reports
from medvlm.metrics.nlg import _as_coco, compute_nlg

SENTENCES = ["the heart is normal in size", "no pleural effusion or pneumothorax", "mild cardiomegaly",
             "left lower lobe opacity likely atelectasis", "lungs are clear", "small right effusion",
             "no acute cardiopulmonary process", "endotracheal tube in place", "possible pneumonia",
             "stable mild pulmonary edema"]


def _reports(n, seed):
    rng = random.Random(seed)
    return [". ".join(rng.sample(SENTENCES, rng.randint(1, 4))) + "." for _ in range(n)]


def test_identity_resample_reproduces_pycocoevalcap_bleu():
    refs, hyps = _reports(40, 1), _reports(40, 2)
    hyps[3] = ""  # an empty generation too
    gts, res = _as_coco(refs, hyps)
    stats = bleu_item_statistics(gts, res)
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert corpus_bleu(stats.sum(axis=0)).tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # a resample that draws every item twice changes nothing either (counts scale, ratios do not)
    assert corpus_bleu(2 * stats.sum(axis=0)).tolist() == pytest.approx(expected, rel=1e-9)


def test_resample_weights_are_seeded_multiplicities():
    weights = resample_weights(7, 5, seed=3)
    assert weights.shape == (5, 7) and (weights.sum(axis=1) == 7).all()
    assert np.array_equal(weights, resample_weights(7, 5, seed=3))
    assert not np.array_equal(weights, resample_weights(7, 5, seed=4))


def test_intervals_keys_seed_and_bounds():
    refs, hyps = _reports(60, 1), _reports(60, 2)
    ci = bootstrap_intervals(refs, hyps, n_resamples=50, seed=7)
    assert ci["ci.seed"] == 7 and ci["ci.n_resamples"] == 50 and ci["ci.alpha"] == 0.05
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1", "ce_f1.Cardiomegaly"):
        low, high = ci[key]
        assert low <= high
    assert "meteor" not in ci  # off by default
    point = compute_nlg(refs, hyps, include_meteor=False)
    for key in ("bleu_1", "rouge_l"):
        assert ci[key][0] <= point[key] <= ci[key][1]
    assert ci == bootstrap_intervals(refs, hyps, n_resamples=50, seed=7)
    assert ci != bootstrap_intervals(refs, hyps, n_resamples=50, seed=8)
    with pytest.raises(UserError, match="n_resamples must be at least 1, got 0"):
        bootstrap_intervals(refs, hyps, n_resamples=0)


def test_perfect_generations_have_degenerate_ce_intervals():
    refs = _reports(30, 5)
    ci = bootstrap_intervals(refs, refs, n_resamples=20)
    assert ci["ce_micro_f1"] == [1.0, 1.0] and ci["bleu_4"][0] == pytest.approx(1.0)


def test_200_resamples_of_500_reports_under_10_seconds():
    refs, hyps = _reports(500, 11), _reports(500, 12)
    ref_labels, gen_labels = label_reports(refs), label_reports(hyps)
    start = time.perf_counter()
    ci = bootstrap_intervals(refs, hyps, ref_labels, gen_labels, n_resamples=200)
    assert time.perf_counter() - start < 10.0
    assert ci["ci.n_resamples"] == 200


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_interval_when_asked():
    refs, hyps = _reports(20, 1), _reports(20, 2)
    ci = bootstrap_intervals(refs, hyps, n_resamples=10, include_meteor=True)
    low, high = ci["meteor"]
    assert 0.0 <= low <= high <= 1.0
