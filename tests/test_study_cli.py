"""`medvlm generate` and `explain` on studies: several views, a prior, a JSONL list of studies."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlm.cli import main

IU_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_images_sample"


def _png(path: Path, seed: int) -> str:
    Image.fromarray((np.random.default_rng(seed).random((40, 36)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_generate_one_report_per_study_with_views_and_prior(pretrained, tmp_path):
    frontal, lateral, prior = (_png(tmp_path / f"{n}.png", i) for i, n in enumerate(("f", "l", "p")))
    out = tmp_path / "one.jsonl"
    assert main(["generate", frontal, lateral, "--prior", prior, "--checkpoint", str(pretrained),
                 "--out", str(out), "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["images"] == [frontal, lateral] and rows[0]["prior"] == [prior]
    assert isinstance(rows[0]["report"], str)


def test_a_studies_file_keeps_every_good_study_and_names_the_bad_one(pretrained, tmp_path, capsys):
    _png(tmp_path / "a.png", 0), _png(tmp_path / "b.png", 1)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [{"id": "s1", "images": ["a.png", "b.png"], "views": ["PA", "LATERAL"]},
             {"id": "s2", "images": ["broken.png"]},
             {"id": "s3", "images": ["b.png"], "prior": ["a.png"]}]
    studies = tmp_path / "studies.jsonl"
    studies.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "reports.jsonl"
    code = main(["generate", "--studies", str(studies), "--checkpoint", str(pretrained), "--out", str(out),
                 "--max-new-tokens", "4", "--batch-size", "2"])
    assert code == 1  # something was skipped
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["s1", "s3"]
    assert "s2" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('{"images": []}', "at least one image"),
    ('{"images": ["a.png"], "views": ["PA", "LATERAL"]}', "2 view names for 1 images"),
    ('{"image": "a.png"}', "unknown field"),
    ('[1, 2]', "expected a JSON object"),
    ("{oops", "not JSON"),
])
def test_a_bad_studies_line_names_the_file_and_line(tmp_path, capsys, line, message):
    studies = tmp_path / "studies.jsonl"
    studies.write_text('{"images": ["a.png"]}\n' + line + "\n")
    assert main(["generate", "--studies", str(studies), "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{studies}:2" in err and message in err


def test_explain_a_study_writes_attention_over_each_view_and_the_prior(pretrained, tmp_path, capsys):
    frontal, lateral, prior = (_png(tmp_path / f"{n}.png", i) for i, n in enumerate(("f", "l", "p")))
    assert main(["explain", frontal, lateral, "--prior", prior, "--checkpoint", str(pretrained),
                 "--out", str(tmp_path / "x"), "--max-words", "3"]) == 0
    summary = json.loads((tmp_path / "x" / "f_explain.json").read_text())
    assert summary["slots"] == ["FRONTAL", "LATERAL", "prior FRONTAL"]
    assert len(summary["files"]) == 3 and all(Path(f).is_file() for f in summary["files"])
    for share in summary["attention_share"]:  # a word's attention over all images sums to at most 1
        assert set(share) == set(summary["slots"]) and sum(share.values()) <= 1.0 + 1e-4


@pytest.mark.skipif(not IU_IMAGES.is_dir(), reason="../shared/data/iu_xray_images_sample is absent")
def test_generate_reads_the_real_iu_studies_as_two_views(pretrained, tmp_path):
    out = tmp_path / "iu.jsonl"
    for uid, number in (("7", "2263"), ("1900", "0584")):
        views = [str(IU_IMAGES / f"CXR{uid}_IM-{number}-{n}.png") for n in ("1001", "2001")]
        assert main(["generate", "--study", *views, "--views", "PA", "LATERAL", "--checkpoint", str(pretrained),
                     "--out", str(out), "--max-new-tokens", "4"]) == 0
        assert json.loads(out.read_text().splitlines()[0])["images"] == views


def test_a_prior_report_for_a_model_that_does_not_read_one_is_refused(pretrained, tmp_path, capsys):
    frontal = _png(tmp_path / "f.png", 0)
    assert main(["generate", frontal, "--prior-report", "Small left effusion.", "--checkpoint", str(pretrained)]) == 2
    assert "not trained to read a prior report" in capsys.readouterr().err


def test_a_studies_line_with_a_bad_prior_report_is_named(tmp_path, capsys):
    studies = tmp_path / "studies.jsonl"
    studies.write_text('{"images": ["a.png"], "prior_report": 3}\n')
    assert main(["generate", "--studies", str(studies), "--checkpoint", str(tmp_path)]) == 2
    assert f"{studies}:1" in capsys.readouterr().err
