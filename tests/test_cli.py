"""The `medvlm` command: help for every subcommand, generate from image files, label reports."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medvlm.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_unknown_command_lists_the_commands(capsys):
    assert main(["trian"]) == 2
    assert "train" in capsys.readouterr().out


def test_generate_writes_jsonl_for_png_jpeg_and_dicom(pretrained, tmp_path):  # noqa: F811
    from tiny import write_dicom

    pixels = (np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.jpg")
    dicom = tmp_path / "c.dcm"
    write_dicom(dicom, pixels.astype(np.uint16))
    out = tmp_path / "reports.jsonl"
    assert main(["generate", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), str(dicom),
                 "--checkpoint", str(pretrained), "--out", str(out), "--max-new-tokens", "8", "--num-beams", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == [str(tmp_path / n) for n in ("a.png", "b.jpg", "c.dcm")]
    assert all(isinstance(r["report"], str) for r in rows)


def test_generate_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "x.png", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_label_writes_the_chexpert_layout(tmp_path):
    reports = tmp_path / "reports.txt"
    reports.write_text("No pleural effusion or pneumothorax.\nLarge left pleural effusion.\n")
    out = tmp_path / "labels.csv"
    assert main(["label", str(reports), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0])[0] == "Reports" and len(rows[0]) == 15
    assert rows[1]["Pleural Effusion"] == "1.0" and rows[0]["Pleural Effusion"] == "0.0"
