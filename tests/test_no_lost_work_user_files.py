"""Issue 15, user files read carefully by one reader (`medvlm.data.tables` for tables and JSONL,
`medvlm.config.load_config` for YAML presets): every error names the file, the line as an editor
shows it and the field; a byte-order mark is fine; empty reports are skipped and counted."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlm.cli import label_main
from medvlm.config import ConfigError, load_config
from medvlm.data.records import DataError
from medvlm.data.tables import load_tabular, read_csv, read_reports

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def png(path: Path) -> None:
    Image.fromarray(np.full((10, 12), 128, np.uint8)).save(path)


def jsonl(path: Path, *rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_bom_csv_is_read_by_training_and_by_label(tmp_path, capsys):
    png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_bytes("\ufeffimage,text\na.png,No effusion.\n".encode("utf-8"))
    assert [r["text"] for r in load_tabular(tmp_path / "t.csv")] == ["No effusion."]
    (tmp_path / "reports.csv").write_bytes("\ufeffReports\nNo effusion.\nSmall effusion.\n".encode("utf-8"))
    assert label_main([str(tmp_path / "reports.csv"), "--out", str(tmp_path / "out.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["reports"] == 2


def test_latin1_text_names_file_line_and_byte_offset(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_bytes("image,text\na.png,Normal.\na.png,Größe normal.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"t\.csv, line 3: not UTF-8 text \(byte 33: 0xf6\); re-save the file as UTF-8"):
        load_tabular(tmp_path / "t.csv")
    assert load_tabular(tmp_path / "t.csv", encoding="latin-1")[1]["text"] == "Größe normal."
    (tmp_path / "r.txt").write_bytes("Normal.\nGröße.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"r\.txt, line 2: not UTF-8 text"):
        read_reports(tmp_path / "r.txt")
    assert label_main([str(tmp_path / "r.txt"), "--encoding", "latin-1"]) == 0


def test_broken_jsonl_line_names_the_right_line(tmp_path):
    # a blank line and a U+2028 inside a string must not shift the count
    path = jsonl(tmp_path / "t.jsonl", {"image": "a.png", "text": "x\u2028y"}, "", '{"image": "b.png", "text": ')
    with pytest.raises(DataError, match=r"t\.jsonl, line 3: not valid JSON \(Expecting value at column 28\)"):
        load_tabular(path)


@pytest.mark.parametrize("line, kind", [('"a report"', "a string"), ('["a.png", "text"]', "a list"), ("42", "a number")])
def test_jsonl_line_that_is_not_an_object(tmp_path, line, kind):
    path = jsonl(tmp_path / "t.jsonl", {"image": "a.png", "text": "x"}, line)
    with pytest.raises(DataError, match=rf"t\.jsonl, line 2: expected a JSON object .*, got {kind}"):
        load_tabular(path)


@pytest.mark.parametrize("value, kind", [(42, "a number"), (["a", "b"], "a list"), ({"findings": "x"}, "an object")])
def test_report_that_is_not_text_names_file_line_and_field(tmp_path, value, kind):
    png(tmp_path / "a.png")
    path = jsonl(tmp_path / "t.jsonl", {"image": "a.png", "text": "fine"}, {"image": "a.png", "text": value})
    with pytest.raises(DataError, match=rf"t\.jsonl, line 2, field 'text': expected text, got {kind}"):
        load_tabular(path)
    assert load_tabular(path, on_error="skip").skipped == {"bad_field": 1}
    with pytest.raises(DataError, match=rf"t\.jsonl, line 2, field 'text': expected text, got {kind}"):
        read_reports(path)


def test_empty_reports_are_skipped_and_counted(tmp_path, caplog):
    png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("image,text\na.png,Normal.\na.png,\na.png,   \na.png,Effusion.\na.png,\n")
    with caplog.at_level(logging.WARNING, logger="medvlm.data"):
        records = load_tabular(tmp_path / "t.csv")
    assert [r["text"] for r in records] == ["Normal.", "Effusion."] and records.dropped == {"empty_report": 3}
    assert any("3 rows with an empty report skipped" in r.getMessage() for r in caplog.records)
    assert len(load_tabular(tmp_path / "t.csv", empty_reports="keep")) == 5
    assert len(load_tabular(tmp_path / "t.csv", text_column=None)) == 5  # no report column: nothing to skip


@pytest.mark.parametrize("content, message", [
    ('image,text\na.png,"two\nlines"\na.png,x,extra\n', r"t\.csv, line 4: 3 cells, but the header has 2 columns"),
    ('image,text\na.png,"never closed\na.png,x\n', r"t\.csv, line 2: cannot parse CSV .*a quote opened here is never closed"),
    ("image,text,image\na.png,x,y\n", r"t\.csv, line 1: column\(s\) \['image'\] appear more than once"),
    ("", r"t\.csv: the file is empty; expected a header row"),
])
def test_malformed_csv_names_the_physical_line(tmp_path, content, message):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        read_csv(tmp_path / "t.csv")


def test_errors_after_a_quoted_newline_name_the_physical_line(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text('image,text,fold\na.png,"Normal.\nNo effusion.",train\na.png,x,holdout\n')
    with pytest.raises(DataError, match=r"t\.csv, line 4, column 'fold': unknown split 'holdout'"):
        load_tabular(tmp_path / "t.csv", split_column="fold")


def test_label_jsonl_errors_name_file_line_and_field(tmp_path, capsys):
    path = jsonl(tmp_path / "r.jsonl", {"report": "No effusion."}, {"id": 3})
    assert label_main([str(path)]) == 1  # the good row is labelled, the bad one named
    assert re.search(r"r\.jsonl, line 2: no 'report' or 'text' field \(fields: id\)", capsys.readouterr().err)
    with pytest.raises(DataError, match=r"r\.jsonl, line 2: no 'report' or 'text' field \(fields: id\)"):
        label_main([str(path), "--strict"])


def test_preset_with_a_duplicated_section_is_refused(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("train:\n  max_steps: 10\ndata:\n  image_size: 64\ntrain:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: duplicate key 'train' at line 5, first at line 1")):
        load_config(path)
    path.write_text("data:\n  options:\n    num_train: 10\n    num_train: 20\n")
    with pytest.raises(ConfigError, match="duplicate key 'num_train' at line 4, first at line 3"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'data.options=\{a: 1, a: 2\}': duplicate key 'a'"):
        load_config(None, ["data.options={a: 1, a: 2}"])


def test_preset_syntax_and_encoding_errors_name_file_and_line(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("train:\n  max_steps: 10\n  batch_size: [4\ndata:\n  image_size: 64\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}, line \d+, column \d+: YAML syntax error"):
        load_config(path)
    path.write_bytes("# préréglage\ntrain:\n  max_steps: 10\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"preset\.yaml, line 1: not UTF-8 text \(byte 4: 0xe9\)"):
        load_config(path)
    path.write_bytes("\ufefftrain:\n  max_steps: 10\n".encode("utf-8"))
    assert load_config(path).train.max_steps == 10


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_the_shared_samples_still_load():
    from medvlm.data.iu_xray import load_iu_xray
    from medvlm.data.vqa import load_vqa_rad

    covid = SHARED / "covid_cxr_sample"
    records = load_tabular(covid / "metadata.csv", image_column="filename", image_root=covid / "images",
                           text_column=None, subject_column="patientid", view_column="view")
    assert len(records) == 84 and not records.skipped
    assert len(load_vqa_rad(SHARED / "vqa_rad_sample")) == 225
    assert len(load_iu_xray(SHARED / "iu_xray_reports", require_images=False, empty_findings="keep")) == 611
