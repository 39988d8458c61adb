"""NLG metrics: our wrappers give pycocoevalcap's own numbers under the report convention."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from medvlm.errors import UserError
from medvlm.metrics import nlg
from medvlm.metrics.nlg import compute_nlg, evaluate_module_path, tokenize_report

REFERENCES = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Left lower lobe opacity, likely atelectasis. Heart size is normal.",
    "Moderate cardiomegaly. Small bilateral pleural effusions.",
    "Lungs are clear. No acute cardiopulmonary process.",
    "Right IJ catheter tip in the SVC. No pneumothorax.",
]
HYPOTHESES = [
    "Heart size is normal. No effusion or pneumothorax.",
    "",  # an empty generation must be scored, not crash
    "Cardiomegaly with small bilateral effusions.",
    "The lungs are clear. No acute cardiopulmonary process.",
    "No pneumothorax.",
]

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")


def _coco(refs, hyps):
    return ({i: [tokenize_report(r)] for i, r in enumerate(refs)},
            {i: [tokenize_report(h)] for i, h in enumerate(hyps)})


def test_tokenize_report():
    assert tokenize_report("Heart's size:  NORMAL.\nNo effusion/pneumothorax; 1.5 cm") == \
        "hearts size normal no effusion pneumothorax 1 5 cm"
    assert tokenize_report("") == "" and tokenize_report(None) == "" and tokenize_report("...") == ""


def test_scores_equal_pycocoevalcap_on_same_tokens():
    ours = compute_nlg(REFERENCES, HYPOTHESES, include_meteor=False)
    gts, res = _coco(REFERENCES, HYPOTHESES)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    assert [ours[f"bleu_{k}"] for k in range(1, 5)] == pytest.approx(bleu, rel=0, abs=1e-12)
    assert ours["rouge_l"] == pytest.approx(float(rouge), abs=1e-12)
    assert ours["cider"] == pytest.approx(float(cider), abs=1e-12)
    assert ours["meteor"] is None  # not requested
    assert set(ours) == set(nlg.NLG_KEYS)


def test_identical_reports_score_high_and_empty_ones_zero():
    same = compute_nlg(REFERENCES, REFERENCES, include_meteor=False)
    assert same["bleu_4"] == pytest.approx(1.0) and same["rouge_l"] == pytest.approx(1.0)
    empty = compute_nlg(REFERENCES, [""] * len(REFERENCES), include_meteor=False)
    assert empty["bleu_1"] == pytest.approx(0.0, abs=1e-6)
    assert empty["rouge_l"] == 0.0 and empty["cider"] == 0.0


def test_all_empty_references_give_no_cider(caplog):
    with caplog.at_level(logging.WARNING):
        scores = compute_nlg(["", ""], ["a b", "c"], include_meteor=False)
    assert scores["cider"] is None and "CIDEr" in caplog.text


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        compute_nlg(["a", "b"], ["a"])


@needs_java
def test_meteor_runs_with_java_and_equals_pycocoevalcap():
    from pycocoevalcap.meteor.meteor import Meteor

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # two JVM start-ups side by side: half the wall time
        direct = pool.submit(lambda: Meteor().compute_score(*_coco(REFERENCES, HYPOTHESES))[0])
        ours = compute_nlg(REFERENCES, HYPOTHESES)["meteor"]
        reference = direct.result()
    assert isinstance(ours, float) and 0.0 < ours < 1.0
    assert ours == pytest.approx(reference, abs=1e-12)


def test_meteor_is_none_without_java(monkeypatch, caplog):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with caplog.at_level(logging.WARNING):
        scores = compute_nlg(REFERENCES, HYPOTHESES)
    assert scores["meteor"] is None and "java not found" in caplog.text
    assert scores["bleu_4"] is not None


def test_meteor_failure_is_none_not_zero(monkeypatch, caplog):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: "/usr/bin/java")

    class Broken:
        def __init__(self, *args, **kwargs):
            raise OSError("jvm exploded")

    monkeypatch.setattr(nlg, "MeteorProcess", Broken)
    with caplog.at_level(logging.WARNING):
        assert compute_nlg(REFERENCES, HYPOTHESES)["meteor"] is None
    assert "jvm exploded" in caplog.text


@pytest.mark.parametrize("behaviour", ["exit 3", "exec sleep 30"])
def test_a_broken_or_hung_java_gives_none(tmp_path, monkeypatch, caplog, behaviour):
    """A real subprocess that dies at once, or never answers, is reported as None with the reason."""
    fake_java = tmp_path / "java"
    fake_java.write_text(f"#!/bin/sh\necho 'no such jar' >&2\n{behaviour}\n")
    fake_java.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: str(fake_java))
    monkeypatch.setattr(nlg, "METEOR_TIMEOUT_S", 1.0)
    with caplog.at_level(logging.WARNING):
        assert compute_nlg(REFERENCES, HYPOTHESES)["meteor"] is None
    assert "METEOR failed" in caplog.text
    assert ("within 1 s" in caplog.text) if "sleep" in behaviour else ("no such jar" in caplog.text
                                                                        or "Broken pipe" in caplog.text)


def test_evaluate_module_path():
    for name in ("bleu", "meteor", "rouge_l", "cider", "nlg", "clinical_efficacy"):
        path = evaluate_module_path(name)
        assert os.path.isfile(os.path.join(path, f"{name}.py"))
    with pytest.raises(UserError, match="shipped"):
        evaluate_module_path("sacrebleu")


def test_evaluate_modules_load_offline(tmp_path):
    """evaluate.load on the shipped directories, with the Hub switched off, gives our numbers."""
    script = f"""
import json, evaluate
from medvlm.metrics.nlg import evaluate_module_path
refs, hyps = {REFERENCES!r}, {HYPOTHESES!r}
out = {{}}
for name in ("bleu", "rouge_l", "cider", "clinical_efficacy"):
    out.update(evaluate.load(evaluate_module_path(name)).compute(predictions=hyps, references=refs))
out.update({{"nlg." + k: v for k, v in evaluate.load(evaluate_module_path("nlg")).compute(
    predictions=hyps, references=refs, include_meteor=False).items()}})
print(json.dumps(out))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    direct = compute_nlg(REFERENCES, HYPOTHESES, include_meteor=False)
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert loaded[key] == pytest.approx(direct[key], abs=1e-12)
        assert loaded[f"nlg.{key}"] == pytest.approx(direct[key], abs=1e-12)
    assert "ce_micro_f1" in loaded
