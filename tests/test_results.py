"""results.md, metrics.json and charts from a small metrics dict."""

import json
import math
import os

from medvlm.results import write_results

METRICS = {
    "bleu_1": 0.40, "bleu_4": 0.10, "meteor": None, "rouge_l": 0.30, "cider": float("nan"),
    "ce_micro_f1": 0.25, "ce_macro_f1": 0.12,
    "ce_f1.Cardiomegaly": 0.5, "ce_precision.Cardiomegaly": 0.6, "ce_recall.Cardiomegaly": 0.4,
    "ce_f1.Pleural Effusion": 0.0, "ce_precision.Pleural Effusion": 0.0, "ce_recall.Pleural Effusion": 0.0,
    "ci.bleu_1": [0.35, 0.45], "ci.bleu_4": [0.08, 0.12], "ci.ce_micro_f1": [0.20, 0.30],
    "ci.ce_f1.Cardiomegaly": [0.3, 0.7], "ci.seed": 0, "ci.n_resamples": 200,
    "baselines.most_frequent.bleu_1": 0.30, "baselines.most_frequent.bleu_4": 0.05,
    "baselines.most_frequent.ce_micro_f1": 0.28, "baselines.most_frequent.ce_f1.Cardiomegaly": 0.1,
    "baselines.nearest_neighbour.bleu_4": 0.15, "baselines.nearest_neighbour.ce_micro_f1": 0.10,
    "num_samples": 42,
}


def test_write_results(tmp_path):
    paths = write_results(METRICS, tmp_path / "eval", title="tiny run")
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["ce_per_label.png", "metrics.json", "metrics.png", "results.md"]
    assert sorted(os.listdir(tmp_path / "eval")) == names  # no temporary files left behind
    for png in ("metrics.png", "ce_per_label.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    raw = (tmp_path / "eval" / "metrics.json").read_text()
    data = json.loads(raw)
    assert list(data) == sorted(METRICS)
    assert data["meteor"] is None and data["cider"] is None  # None and NaN both become null
    assert "NaN" not in raw and data["ci.bleu_4"] == [0.08, 0.12] and data["num_samples"] == 42

    md = (tmp_path / "eval" / "results.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# tiny run"
    assert "| metric | model | most_frequent | nearest_neighbour |" in lines
    assert "| BLEU-4 | 0.1000 [0.0800, 0.1200] | 0.0500 | 0.1500 |" in lines
    assert "| BLEU-1 | 0.4000 [0.3500, 0.4500] | 0.3000 | n/a |" in lines
    assert "| METEOR | n/a | n/a | n/a |" in lines
    assert "| CIDEr-D | n/a | n/a | n/a |" in lines
    assert "| CE F1 (micro) | 0.2500 [0.2000, 0.3000] | 0.2800 | 0.1000 |" in lines
    verdict_mf = next(line for line in lines if line.startswith("- **most_frequent**"))
    assert "beats it on BLEU-4 (0.1000 vs 0.0500, CI above it)" in verdict_mf
    assert "does not beat it on CE F1 (micro) (0.2500 vs 0.2800)" in verdict_mf
    verdict_nn = next(line for line in lines if line.startswith("- **nearest_neighbour**"))
    assert "does not beat it on BLEU-4 (0.1000 vs 0.1500)" in verdict_nn
    assert "beats it on CE F1 (micro) (0.2500 vs 0.1000, CI above it)" in verdict_nn
    assert "| Cardiomegaly | 0.5000 [0.3000, 0.7000] | 0.6000 | 0.4000 | 0.1000 | n/a |" in lines
    assert "200 resamples, seed 0" in md and "- num_samples: 42" in md


def test_write_results_without_baselines_or_intervals(tmp_path):
    paths = write_results({"bleu_4": 0.2, "rouge_l": math.nan}, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| BLEU-4 | 0.2000 |" in md and "Baselines" not in md
    assert any(p.endswith("metrics.png") for p in paths)


def test_vqa_results_are_judged_on_vqa_accuracy_not_on_report_metrics():
    from medvlm.results import results_markdown

    text = results_markdown({"vqa_overall_acc": 0.9, "vqa_closed_acc": 0.93,
                             "baselines.majority.vqa_overall_acc": 0.45, "baselines.majority.vqa_closed_acc": 0.49})
    assert "beats it on vqa_overall_acc (0.9000 vs 0.4500" in text and "beats it on vqa_closed_acc" in text
    assert "BLEU-4" not in text
