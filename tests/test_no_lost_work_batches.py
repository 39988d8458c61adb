"""Batch commands keep every good result: a bad item is named with its reason, the others are
written (streamed), and the command ends with a count and a non-zero exit status; --strict stops
at the first bad item. An empty generated report is "no prediction", never "No Finding"."""

import json

import numpy as np
import pytest
from PIL import Image

from medvlm.batch import EXIT_SOME_FAILED, BadItems, JsonlStream
from medvlm.cli import main
from medvlm.errors import UserError


@pytest.fixture()
def twenty_images(tmp_path):
    """20 PNGs, the 8th of them truncated to half its bytes."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(20):
        path = tmp_path / f"img{i:02d}.png"
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    data = paths[7].read_bytes()
    paths[7].write_bytes(data[: len(data) // 2])
    return [str(p) for p in paths]


def test_generate_writes_19_reports_and_names_the_truncated_image(pretrained, twenty_images, tmp_path, capsys):
    out = tmp_path / "reports.jsonl"
    status = main(["generate", *twenty_images, "--checkpoint", str(pretrained), "--out", str(out),
                   "--max-new-tokens", "4", "--batch-size", "8"])
    assert status == EXIT_SOME_FAILED
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == [p for i, p in enumerate(twenty_images) if i != 7]
    err = capsys.readouterr().err
    assert f"skipped {twenty_images[7]}" in err and "img07.png" in err
    assert "19 done, 1 failed" in err


def test_generate_strict_stops_at_the_bad_image_keeping_what_was_written(pretrained, twenty_images, tmp_path,
                                                                           capsys):
    out = tmp_path / "reports.jsonl"
    status = main(["generate", *twenty_images, "--checkpoint", str(pretrained), "--out", str(out),
                   "--max-new-tokens", "4", "--batch-size", "4", "--strict"])
    assert status == 2
    assert "img07.png" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == twenty_images[:4]  # the first batch was on disk already


def test_generate_with_every_image_good_exits_0(pretrained, twenty_images, tmp_path, capsys):
    good = [p for i, p in enumerate(twenty_images) if i != 7][:3]
    assert main(["generate", *good, "--checkpoint", str(pretrained), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["image"] for line in captured.out.splitlines()] == good
    assert "3 done, 0 failed" in captured.err


def test_generate_names_a_missing_file(pretrained, twenty_images, tmp_path, capsys):
    missing = str(tmp_path / "nope.png")
    assert main(["generate", twenty_images[0], missing, "--checkpoint", str(pretrained),
                 "--max-new-tokens", "4"]) == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    assert "nope.png" in captured.err and "missing_file: 1" in captured.err


def test_retrieve_ranks_the_readable_images_and_names_the_bad_one(pretrained, twenty_images, capsys):
    status = main(["retrieve", "--checkpoint", str(pretrained), "--image", *twenty_images[5:10],
                   "--text", "Small left pleural effusion.", "--top-k", "10"])
    assert status == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    ranked = [json.loads(line)["image"] for line in captured.out.splitlines()]
    assert sorted(ranked) == sorted(p for i, p in enumerate(twenty_images[5:10], start=5) if i != 7)
    assert "img07.png" in captured.err and "4 done, 1 failed" in captured.err


def test_retrieve_against_a_gallery_skips_the_bad_image(pretrained, twenty_images, tmp_path, capsys):
    gallery = tmp_path / "gallery.txt"
    gallery.write_text("No acute process.\nSmall left pleural effusion.\n")
    status = main(["retrieve", "--checkpoint", str(pretrained), "--image", twenty_images[6], twenty_images[7],
                   "--gallery", str(gallery), "--top-k", "2"])
    assert status == EXIT_SOME_FAILED
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [twenty_images[6]] and len(rows[0]["reports"]) == 2


def test_bad_items_counts_by_reason_and_strict_raises(capsys):
    bad = BadItems("demo")
    assert bad.attempt("a", lambda: 1) == (True, 1)
    error = UserError("a.png: cannot read")
    error.reason = "unreadable_file"

    def fail():
        raise error

    assert bad.attempt("a.png", fail) == (False, None)
    assert bad.as_metrics() == {"skipped": 1, "skipped.unreadable_file": 1}
    assert bad.finish(done=3) == EXIT_SOME_FAILED
    assert "3 done, 1 failed (unreadable_file: 1)" in capsys.readouterr().err
    with pytest.raises(UserError):
        BadItems("demo", strict=True).attempt("a.png", fail)


def test_bad_items_let_bugs_through():
    with pytest.raises(ZeroDivisionError):
        BadItems("demo").attempt("x", lambda: 1 / 0)


def test_jsonl_stream_has_each_row_on_disk_as_it_is_written(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlStream(path) as out:
        out.write({"a": 1})
        assert path.read_text() == '{"a": 1}\n'  # flushed before the next row is made
        out.write({"a": 2})
    assert out.count == 2


# ---- empty generated reports

def test_an_empty_generated_report_predicts_nothing():
    from medvlm.metrics.chexpert import label_generated_reports, label_reports
    from medvlm.observations import CHEXPERT_OBSERVATIONS

    no_finding = CHEXPERT_OBSERVATIONS.index("No Finding")
    assert label_reports([""])[0, no_finding] == 1.0  # CheXpert's rule for a report naming nothing
    assert np.isnan(label_generated_reports(["", "  "])).all()
    assert label_generated_reports(["No acute cardiopulmonary process."])[0, no_finding] == 1.0


def test_empty_generations_score_zero_and_are_counted():
    from medvlm.tasks.report_generation import score_reports

    references = ["No acute cardiopulmonary process."] * 4 + ["There is a small left pleural effusion."]
    scores = score_reports(references, [""] * 5, with_meteor=False)
    assert scores["ce_micro_f1"] == 0.0 and scores["ce_recall"] == 0.0
    assert scores["num_empty_reports"] == 5
    assert score_reports(references, references, with_meteor=False)["num_empty_reports"] == 0


def test_eval_leaves_out_an_unreadable_test_image_counts_it_and_writes_the_rest(pretrained, tmp_path, capsys,
                                                                                 monkeypatch):
    from medvlm.config import as_overrides, load_config
    from medvlm.runs import load_trained, records_for
    from medvlm.tasks.evaluate import evaluate_checkpoint

    model, processor, run_cfg = load_trained(pretrained)
    cfg = load_config(None, as_overrides(run_cfg.to_dict()) + ["eval.max_samples=4"])
    test, train = records_for(cfg, "test")[:4], records_for(cfg, "train")[:8]
    for i, record in enumerate(test):
        path = tmp_path / f"test{i}.png"
        Image.fromarray((np.clip(record["image"], 0, 1) * 255).astype(np.uint8)).save(path)
        record["image"] = str(path)
        record["images"] = [{"image": str(path), "view": record["view"]}]
    (tmp_path / "test2.png").write_bytes((tmp_path / "test2.png").read_bytes()[:60])
    from medvlm.metrics.nlg import compute_nlg

    # localisation and METEOR (a Java process per call) are not what this tests
    monkeypatch.setattr("medvlm.tasks.evaluate.EXPLAIN_STUDIES", 2)
    monkeypatch.setattr("medvlm.tasks.report_generation.compute_nlg",
                        lambda refs, hyps, include_meteor=True: compute_nlg(refs, hyps, include_meteor=False))
    metrics, _ = evaluate_checkpoint(model, processor, cfg, test, train, tmp_path / "eval")
    assert metrics["skipped"] == 1 and metrics["num_samples"] == 3
    assert "test2.png" in capsys.readouterr().err
    assert len((tmp_path / "eval" / "generations.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["skipped"] == 1


# ---- label

def test_label_keeps_the_good_rows_and_names_the_bad_ones(tmp_path, capsys):
    source = tmp_path / "reports.jsonl"
    source.write_text('{"report": "Small left pleural effusion."}\n{"report": 42}\n{"text": "No pneumothorax."}\n'
                      '{"id": 3}\n{"report": "Mild cardiomegaly."}\n')
    out = tmp_path / "labels.csv"
    assert main(["label", str(source), "--out", str(out)]) == EXIT_SOME_FAILED
    rows = out.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["Small left pleural effusion.", "No pneumothorax.",
                                                   "Mild cardiomegaly."]
    err = capsys.readouterr().err
    assert "reports.jsonl, line 2" in err and "expected text" in err
    assert "reports.jsonl, line 4" in err and "no 'report' or 'text' field" in err
    assert "3 done, 2 failed" in err


def test_label_strict_stops_at_the_first_bad_row(tmp_path, capsys):
    source = tmp_path / "reports.jsonl"
    source.write_text('{"report": "Small left pleural effusion."}\n{"report": ["a", "b"]}\n')
    assert main(["label", str(source), "--out", str(tmp_path / "labels.csv"), "--strict"]) == 2
    assert "line 2" in capsys.readouterr().err


def test_label_of_a_file_without_a_report_column_is_one_error(tmp_path, capsys):
    source = tmp_path / "reports.csv"
    source.write_text("id,findings\n1,clear\n")
    assert main(["label", str(source)]) == 2
    assert "no report column" in capsys.readouterr().err
