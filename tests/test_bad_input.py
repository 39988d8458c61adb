"""One test per kind of bad input: a DataError naming the file (and row/field) and what was
expected, or, with on_error="skip", the item left out, counted by reason and summarised."""

import json
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from medvlm.data.images import load_image
from medvlm.data.iu_xray import load_iu_xray
from medvlm.data.mimic_cxr import load_mimic_cxr
from medvlm.data.prepare import prepare_cache
from medvlm.data.records import DataError, SkipLog, make_record
from medvlm.data.tables import load_tabular
from medvlm.data.vqa import load_vqa_rad
from medvlm.observations import CHEXPERT_OBSERVATIONS


def png(path, size=(12, 10)):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)).save(path)
    return path


def jpeg(path, size=(64, 48)):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)).save(path, quality=90)
    return path


def csv_of(tmp_path, names):
    """A CSV with columns image,text listing `names` (files under tmp_path)."""
    lines = ["image,text"] + [f"{n},report {i}" for i, n in enumerate(names)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "t.csv"


# --------------------------------------------------------------------------- images


def test_zero_byte_image(tmp_path):
    (tmp_path / "empty.png").touch()
    with pytest.raises(DataError, match=r"empty\.png: image file is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    png(tmp_path / "ok.png")
    table = csv_of(tmp_path, ["ok.png", "empty.png"])
    with pytest.raises(DataError, match="empty.png"):
        load_tabular(table)
    recs = load_tabular(table, on_error="skip")
    assert len(recs) == 1 and recs.skipped == {"empty_file": 1}


def test_truncated_images(tmp_path):
    data = jpeg(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: image is truncated or corrupt"):
        load_image(tmp_path / "cut.jpg")
    data = png(tmp_path / "full.png", size=(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: image is truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    table = csv_of(tmp_path, ["full.jpg", "cut.jpg", "cut.png"])
    assert len(load_tabular(table, on_error="skip")) == 3  # a stat check cannot see truncation ...
    recs = load_tabular(table, on_error="skip", verify_images=True)  # ... decoding can
    assert len(recs) == 1 and recs.skipped == {"corrupt_image": 2}


def test_corrupt_image(tmp_path):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(DataError, match=r"noise\.png: not a readable image \(expected PNG, JPEG or DICOM"):
        load_image(tmp_path / "noise.png")
    summary = prepare_cache([make_record(image=str(tmp_path / "noise.png"), text="", study_id="1",
                                         split="train")], tmp_path / "c", 8, on_error="skip", progress=False)
    assert summary.skipped == {"corrupt_image": 1} and summary.num_records == 0


def test_image_over_pixel_limit(tmp_path):
    png(tmp_path / "a.png", size=(40, 30))
    with pytest.raises(DataError, match=r"a\.png: image is 40x30 = 1,200 pixels, over the limit of 1,000"):
        load_image(tmp_path / "a.png", max_pixels=1000)
    assert load_image(tmp_path / "a.png", max_pixels=1200).shape == (30, 40)
    with pytest.raises(DataError, match="over the limit"):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=100)


def test_decompression_bomb_header_refused_before_decoding(tmp_path):
    # A real PNG whose header claims 30000 x 30000 pixels (900 MP); only the header is read.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                                        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no reliance on PIL's DecompressionBombWarning
        with pytest.raises(DataError, match=r"bomb\.png: image is over the pixel limit.*900000000 pixels"):
            load_image(tmp_path / "bomb.png")
    # Under PIL's own limit, ours decides, from the header alone.
    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                                       chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"big\.png: image is 9000x9000 = 81,000,000 pixels, over the limit"):
            load_image(tmp_path / "big.png")


def test_missing_image_file(tmp_path):
    with pytest.raises(DataError, match=r"gone\.png: image file not found"):
        load_image(tmp_path / "gone.png")
    png(tmp_path / "ok.png")
    recs = load_tabular(csv_of(tmp_path, ["ok.png", "gone.png"]), on_error="skip")
    assert len(recs) == 1 and recs.skipped == {"missing_file": 1}


def test_file_that_goes_bad_after_loading(tmp_path):
    """Training-time case: records were fine when loaded, the file breaks later. load_image
    raises DataError (and only DataError), so the training Dataset can decide what to do."""
    png(tmp_path / "ok.png")
    recs = load_tabular(csv_of(tmp_path, ["ok.png"]))
    (tmp_path / "ok.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        load_image(recs[0]["image"])
    assert info.value.path == str(tmp_path / "ok.png") and info.value.reason == "corrupt_image"


def write_dicom(path, **kwargs):
    from tiny import write_dicom as write

    return write(path, np.arange(12, dtype=np.uint16).reshape(3, 4), **kwargs)


def test_dicom_without_pixel_data(tmp_path):
    write_dicom(tmp_path / "sr.dcm", pixel_data=False)
    with pytest.raises(DataError, match=r"sr\.dcm: DICOM file has no pixel data"):
        load_image(tmp_path / "sr.dcm")


def test_multi_frame_dicom_refused(tmp_path):
    from tiny import write_dicom as write

    write(tmp_path / "cine.dcm", np.zeros((3, 4, 5), np.uint16), frames=3)
    with pytest.raises(DataError, match=r"cine\.dcm: multi-frame DICOM \(3 frames\) is not supported"):
        load_image(tmp_path / "cine.dcm")


def test_corrupt_dicom(tmp_path):
    data = write_dicom(tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 10])
    with pytest.raises(DataError, match=r"cut\.dcm: .*(truncated|corrupt|cannot decode)"):
        load_image(tmp_path / "cut.dcm")


# --------------------------------------------------------------------------- reports


def mimic_tree(root, reports: dict):
    """Minimal MIMIC-CXR-JPG tree: one PA image per study; reports {study: bytes or None}."""
    split = ["dicom_id,study_id,subject_id,split"]
    meta = ["dicom_id,subject_id,study_id,ViewPosition"]
    for k, (study, data) in enumerate(reports.items()):
        subject = f"1000000{k}"
        split.append(f"d{k},{study},{subject},train")
        meta.append(f"d{k},{subject},{study},PA")
        folder = root / "files" / "p10" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True)
        png(folder / f"s{study}" / f"d{k}.jpg")
        if data is not None:
            (folder / f"s{study}.txt").write_bytes(data)
    (root / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(split) + "\n")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    return root


GOOD = b"FINAL REPORT\n FINDINGS: Lungs clear.\n IMPRESSION: Normal.\n"


def test_empty_report(tmp_path):
    root = mimic_tree(tmp_path, {"501": GOOD, "502": b"  \n \n"})
    with pytest.raises(DataError, match=r"s502\.txt: report is empty; expected report text"):
        load_mimic_cxr(root)
    recs = load_mimic_cxr(root, on_error="skip")
    assert [r["study_id"] for r in recs] == ["501"] and recs.skipped == {"empty_report": 1}


def test_non_utf8_report(tmp_path):
    root = mimic_tree(tmp_path, {"501": GOOD, "502": "FINDINGS: Lunge frei, Größe normal.".encode("latin-1")})
    with pytest.raises(DataError, match=r"s502\.txt: report is not valid UTF-8 \(byte \d+"):
        load_mimic_cxr(root)
    assert load_mimic_cxr(root, on_error="skip").skipped == {"not_utf8": 1}


def test_missing_report(tmp_path):
    root = mimic_tree(tmp_path, {"501": GOOD, "502": None})
    with pytest.raises(DataError, match=r"s502\.txt: report file not found"):
        load_mimic_cxr(root)
    assert load_mimic_cxr(root, on_error="skip").skipped == {"missing_report": 1}


# --------------------------------------------------------------------------- tables


def test_csv_with_misnamed_columns(tmp_path):
    png(tmp_path / "ok.png")
    (tmp_path / "t.csv").write_text("Image Path,Report\nok.png,fine\n")
    with pytest.raises(DataError, match=r"t\.csv: no column for image_column='image', text_column='text'; "
                                        r"the table has columns \['Image Path', 'Report'\]"):
        load_tabular(tmp_path / "t.csv", on_error="skip")  # structural: raises even under skip
    with pytest.raises(DataError, match=r"label column 'No Finding'"):
        load_tabular(tmp_path / "t.csv", image_column="Image Path", text_column="Report", label_columns="chexpert")
    assert len(load_tabular(tmp_path / "t.csv", image_column="Image Path", text_column="Report")) == 1


def test_mimic_csv_with_missing_column(tmp_path):
    root = mimic_tree(tmp_path, {"501": GOOD})
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id,study_id,View\nd0,10000000,501,PA\n")
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) \['ViewPosition'\]; "
                                        r"the file has columns \['dicom_id', 'subject_id', 'study_id', 'View'\]"):
        load_mimic_cxr(root)
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(DataError, match=r"missing mimic-cxr-2\.0\.0-split\.csv"):
        load_mimic_cxr(root)


def test_bad_cell_values_name_row_and_column(tmp_path):
    png(tmp_path / "ok.png")
    labels = ",".join(CHEXPERT_OBSERVATIONS)
    good = ",".join(["0"] * 14)
    bad = ",".join(["0"] * 13 + ["yes"])
    (tmp_path / "t.csv").write_text(f"image,text,fold,{labels}\nok.png,a,train,{good}\nok.png,b,train,{bad}\n"
                                    f"ok.png,c,holdout,{good}\n")
    with pytest.raises(DataError, match=r"t\.csv, line 3, column 'Support Devices': label value 'yes' is not one of"):
        load_tabular(tmp_path / "t.csv", label_columns="chexpert")
    recs = load_tabular(tmp_path / "t.csv", label_columns="chexpert", split_column="fold", on_error="skip")
    assert [r["text"] for r in recs] == ["a"] and recs.skipped == {"bad_label": 1, "bad_split": 1}


def test_non_utf8_csv_and_bad_jsonl(tmp_path):
    (tmp_path / "t.csv").write_bytes("image,text\nö.png,Größe\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"t\.csv, line 2: not UTF-8 text \(byte 11: 0xf6\)"):
        load_tabular(tmp_path / "t.csv")
    (tmp_path / "t.jsonl").write_text('{"image": "a.png", "text": "x"}\n{"image": "b.png", "text": \n')
    with pytest.raises(DataError, match=r"t\.jsonl, line 2: not valid JSON"):
        load_tabular(tmp_path / "t.jsonl")


def test_bad_json_items(tmp_path):
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    png(tmp_path / "VQA_RAD Image Folder" / "a.jpg")
    items = [{"qid": 1, "image_name": "a.jpg", "question": "q?", "answer": "yes", "answer_type": "CLOSED"},
             {"qid": 2, "image_name": "a.jpg", "question": "q?", "answer": "yes", "answer_type": "MAYBE"},
             {"qid": 3, "image_name": "a.jpg", "question": "q?", "answer_type": "OPEN"}]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"item 1 \(qid 2\): answer_type 'MAYBE'; expected CLOSED or OPEN"):
        load_vqa_rad(tmp_path)
    recs = load_vqa_rad(tmp_path, on_error="skip")
    assert [r["qid"] for r in recs] == ["1"] and recs.skipped == {"bad_field": 1, "missing_field": 1}
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [{"id": "x", "image_path": ["a.png"]}]}))
    with pytest.raises(DataError, match=r"annotation\.json, train\[0\]: missing field\(s\) \['report'\]"):
        load_iu_xray(tmp_path)


# --------------------------------------------------------------------------- the summary


def test_skip_summary_is_logged_once(tmp_path, caplog):
    png(tmp_path / "ok.png")
    (tmp_path / "empty.png").touch()
    with caplog.at_level(logging.WARNING, logger="medvlm.data"):
        recs = load_tabular(csv_of(tmp_path, ["ok.png", "gone.png", "empty.png", "gone2.png"]), on_error="skip")
    assert len(recs) == 1 and recs.skipped == {"missing_file": 2, "empty_file": 1}
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1
    message = warnings_[0].getMessage()
    assert "loaded 1 record(s); skipped 3 bad item(s): empty_file=1, missing_file=2" in message
    assert "gone.png: image file not found" in message  # examples name the files


def test_skiplog_contract():
    log = SkipLog("raise")
    with pytest.raises(DataError):
        log.skip(DataError("x", reason="r"))
    log = SkipLog("skip")
    log.skip(DataError("x", reason="r"))
    log.drop("filtered", 3)
    out = log.finish([{"a": 1}])
    assert out == [{"a": 1}] and out.skipped == {"r": 1} and out.dropped == {"filtered": 3}
    with pytest.raises(ValueError, match="on_error"):
        SkipLog("ignore")
