"""Loaders against miniature trees in each dataset's real layout, and against the real-format
samples in ../shared/data (skipped when that folder is absent)."""

import collections
import gzip
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlm.data.images import load_image
from medvlm.data.iu_xray import load_iu_xray
from medvlm.data.mimic_cxr import load_mimic_cxr
from medvlm.data.records import RECORD_KEYS, VQA_KEYS, DataError, hash_split
from medvlm.data.tables import load_tabular
from medvlm.data.vqa import load_slake, load_vqa_rad
from medvlm.observations import CHEXPERT_OBSERVATIONS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


def tiny_image(path, value=128, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def assert_schema(records, vqa=False):
    for r in records:
        assert set(RECORD_KEYS) <= set(r)
        if vqa:
            assert set(VQA_KEYS) <= set(r)
            assert r["answer_type"] in ("closed", "open") and isinstance(r["qid"], str)
        assert r["split"] in ("train", "validation", "test")
        assert isinstance(r["study_id"], str) and isinstance(r["subject_id"], str)
        assert r["labels"] is None or len(r["labels"]) == len(CHEXPERT_OBSERVATIONS)


# --------------------------------------------------------------------------- MIMIC-CXR

REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___ with cough  // eval for pneumonia
 
 COMPARISON:  ___
 
 FINDINGS: 
 
 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax.  Heart size is normal.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""
REPORT_IMPRESSION_ONLY = """                                 FINAL REPORT
 INDICATION:  ___-year-old with chest pain.
 
 IMPRESSION: 
 
 Mild pulmonary edema.
"""
REPORT_LOWER = """FINAL REPORT
indication: fever.
Findings :  Right lower lobe opacity,
 concerning for pneumonia.
impression : Pneumonia.
"""
REPORT_NO_SECTIONS = """ INDICATION:  ___ eval.
 COMPARISON:  None.
"""

# (subject, study, split, [(dicom_id, view)], report)
MIMIC_STUDIES = [
    ("10000032", "50414267", "train", [("d1", "PA"), ("d2", "LATERAL")], REPORT_FULL),
    ("10000032", "53189527", "train", [("d3", "AP"), ("d4", "PA")], REPORT_FULL),
    ("10000764", "57375967", "validate", [("d5", "AP")], REPORT_IMPRESSION_ONLY),
    ("11000011", "51111111", "test", [("d6", "PA")], REPORT_LOWER),
    ("12000022", "52222222", "train", [("d7", "PA")], REPORT_NO_SECTIONS),
]


def write_mimic_tree(root: Path, *, gz=False, zip_reports=False):
    split_rows, meta_rows = ["dicom_id,study_id,subject_id,split"], [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns"]
    reports = {}
    for subject, study, split, images, report in MIMIC_STUDIES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        for dicom_id, view in images:
            split_rows.append(f"{dicom_id},{study},{subject},{split}")
            meta_rows.append(f"{dicom_id},{subject},{study},CHEST (PA AND LAT),{view},6,8")
            tiny_image(folder / f"s{study}" / f"{dicom_id}.jpg")
        reports[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = report
    labels = ["subject_id,study_id," + ",".join(CHEXPERT_OBSERVATIONS)]
    labels.append("10000032,50414267,1.0" + "," * 13)  # No Finding positive, rest blank
    labels.append("11000011,51111111,,,,,1.0,,,1.0,-1.0,0.0,,,,")
    tables = {"split": split_rows, "metadata": meta_rows, "chexpert": labels}
    for name, rows in tables.items():
        text = "\n".join(rows) + "\n"
        path = root / f"mimic-cxr-2.0.0-{name}.csv"
        if gz:
            with gzip.open(f"{path}.gz", "wt") as f:
                f.write(text)
        else:
            path.write_text(text)
    if zip_reports:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as z:
            for name, text in reports.items():
                z.writestr(name, text)
    else:
        for name, text in reports.items():
            (root / name).write_text(text)
    return root


def test_mimic_defaults(tmp_path):
    recs = load_mimic_cxr(write_mimic_tree(tmp_path))
    assert_schema(recs)
    by_study = {r["study_id"]: r for r in recs}
    assert sorted(by_study) == ["50414267", "51111111", "53189527"]
    assert len(recs) == 3  # one image per study
    assert by_study["53189527"]["view"] == "PA"  # PA preferred though AP comes first
    r = by_study["50414267"]
    assert r["image"].endswith("files/p10/p10000032/s50414267/d1.jpg")
    assert r["subject_id"] == "10000032" and r["split"] == "train"
    assert r["text"] == r["findings"] == ("The lungs are clear without focal consolidation. No pleural "
                                          "effusion or pneumothorax. Heart size is normal.")
    assert r["impression"] == "No acute cardiopulmonary process."
    assert r["labels"][0] == 1.0 and all(math.isnan(v) for v in r["labels"][1:])
    lab = by_study["51111111"]["labels"]
    assert lab[CHEXPERT_OBSERVATIONS.index("Lung Opacity")] == 1.0
    assert lab[CHEXPERT_OBSERVATIONS.index("Pneumonia")] == 1.0
    assert lab[CHEXPERT_OBSERVATIONS.index("Atelectasis")] == -1.0
    assert lab[CHEXPERT_OBSERVATIONS.index("Pneumothorax")] == 0.0
    assert by_study["53189527"]["labels"] is None  # not in the label file
    assert by_study["51111111"]["text"] == "Right lower lobe opacity, concerning for pneumonia."
    assert recs.dropped == {"missing_target": 2, "view_filtered": 1}
    assert not recs.skipped


def test_mimic_options(tmp_path):
    root = write_mimic_tree(tmp_path)
    every = load_mimic_cxr(root, views=None, images_per_study="all", target_section="findings+impression",
                           drop_missing_target=False)
    assert len(every) == 7
    assert {r["view"] for r in every} == {"PA", "AP", "LATERAL"}
    assert {r["split"] for r in every} == {"train", "validation", "test"}  # validate -> validation
    full = next(r for r in every if r["study_id"] == "50414267")
    assert full["text"].endswith("Heart size is normal. No acute cardiopulmonary process.")
    assert next(r for r in every if r["study_id"] == "52222222")["text"] == ""

    imp = load_mimic_cxr(root, target_section="impression")
    assert {r["study_id"]: r["text"] for r in imp}["57375967"] == "Mild pulmonary edema."
    assert [r["split"] for r in load_mimic_cxr(root, split="validation", target_section="impression")] == ["validation"]
    assert [r["study_id"] for r in load_mimic_cxr(root, split="test")] == ["51111111"]
    ap_only = load_mimic_cxr(root, views=["ap"], images_per_study="all")
    assert [r["image"].rsplit("/", 1)[-1] for r in ap_only] == ["d3.jpg"]
    assert load_mimic_cxr(root, images_per_study="all", split="train").dropped["view_filtered"] == 1
    with pytest.raises(ValueError, match="images_per_study"):
        load_mimic_cxr(root, images_per_study="two")


def test_mimic_splits_are_patient_disjoint(tmp_path):
    recs = load_mimic_cxr(write_mimic_tree(tmp_path), views=None, images_per_study="all",
                          drop_missing_target=False)
    splits_of = collections.defaultdict(set)
    for r in recs:
        splits_of[r["subject_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())


def test_mimic_gz_tables_and_zipped_reports(tmp_path):
    plain = load_mimic_cxr(write_mimic_tree(tmp_path / "a"))
    zipped = load_mimic_cxr(write_mimic_tree(tmp_path / "b", gz=True, zip_reports=True))
    assert not (tmp_path / "b" / "files" / "p10" / "p10000032" / "s50414267.txt").exists()
    assert [r["text"] for r in plain] == [r["text"] for r in zipped]
    # an explicit reports_path also works
    other = tmp_path / "b" / "mimic-cxr-reports.zip"
    moved = tmp_path / "elsewhere.zip"
    other.rename(moved)
    assert len(load_mimic_cxr(tmp_path / "b", reports_path=moved)) == 3


# --------------------------------------------------------------------------- IU X-ray


def write_r2gen(root: Path):
    ann = {"train": [], "val": [], "test": []}
    for i, split in enumerate(["train", "train", "val", "test"]):
        sid = f"CXR{i}_IM-000{i}"
        paths = [f"{sid}/0.png", f"{sid}/1.png"]
        for p in paths:
            tiny_image(root / "images" / p)
        report = "" if i == 1 else f"the heart is normal in size . the lungs are clear . study {i} ."
        ann[split].append({"id": sid, "report": report, "image_path": paths, "split": split})
    (root / "annotation.json").write_text(json.dumps(ann))
    return root


def test_iu_r2gen_layout(tmp_path):
    root = write_r2gen(tmp_path)
    recs = load_iu_xray(root)
    assert_schema(recs)
    assert len(recs) == 6  # 3 studies with a report x 2 views
    assert recs.dropped == {"empty_findings": 1}
    assert {r["split"] for r in recs} == {"train", "validation", "test"}
    assert recs[0]["image"].endswith("images/CXR0_IM-0000/0.png") and recs[0]["view"] == "FRONTAL"
    assert recs[0]["text"] == "the heart is normal in size. the lungs are clear. study 0."
    assert [r["view"] for r in load_iu_xray(root, views="lateral")] == ["LATERAL"] * 3
    assert len(load_iu_xray(root, empty_findings="keep")) == 8
    assert len(load_iu_xray(root, split="test")) == 2


def write_openi(root: Path, *, images=True):
    reports = [
        ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"],
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "XXXX-year-old male", "None",
         "The XXXX examination consists of frontal and lateral radiographs. Lungs are clear.",
         "No acute cardiopulmonary findings."],
        ["2", "Opacity", "Opacity", "Chest, 2 views", "Cough", "", "", "Right lower lobe pneumonia."],
        ["3", "normal", "normal", "Chest", "", "", "", ""],
    ]
    projections = [["uid", "filename", "projection"],
                   ["1", "1_IM-0001-1001.dcm.png", "Frontal"], ["1", "1_IM-0001-2001.dcm.png", "Lateral"],
                   ["2", "2_IM-0002-1001.dcm.png", "Frontal"], ["3", "3_IM-0003-1001.dcm.png", "Frontal"]]
    import csv

    for name, rows in (("indiana_reports.csv", reports), ("indiana_projections.csv", projections)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    if images:
        for _, filename, _ in projections[1:]:
            tiny_image(root / "images" / "images_normalized" / filename)
    return root


def test_iu_openi_layout_and_empty_findings_policies(tmp_path):
    root = write_openi(tmp_path)
    recs = load_iu_xray(root, split_fractions=(1.0, 0.0, 0.0))
    assert_schema(recs)
    assert [(r["study_id"], r["view"]) for r in recs] == [("1", "FRONTAL"), ("1", "LATERAL")]
    assert recs[0]["findings"] == "The examination consists of frontal and lateral radiographs. Lungs are clear."
    assert recs[0]["impression"] == "No acute cardiopulmonary findings."
    assert recs[0]["image"].endswith("images/images_normalized/1_IM-0001-1001.dcm.png")
    assert recs.dropped == {"empty_findings": 2}
    use = load_iu_xray(root, empty_findings="use_impression", split_fractions=(1.0, 0.0, 0.0))
    assert {r["study_id"]: r["text"] for r in use}["2"] == "Right lower lobe pneumonia."
    assert use.dropped == {"empty_target": 1}
    keep = load_iu_xray(root, empty_findings="keep", split_fractions=(1.0, 0.0, 0.0))
    assert len(keep) == 4 and not keep.dropped
    kept_tokens = load_iu_xray(root, deid_tokens="keep", views="frontal")
    assert "XXXX" in kept_tokens[0]["text"] and len(kept_tokens) == 1


def test_iu_hash_split_is_deterministic_and_follows_fractions():
    splits = [hash_split(str(uid), (0.7, 0.1, 0.2)) for uid in range(3000)]
    counts = collections.Counter(splits)
    assert abs(counts["train"] / 3000 - 0.7) < 0.03 and abs(counts["test"] / 3000 - 0.2) < 0.03
    assert splits == [hash_split(str(uid), (0.7, 0.1, 0.2)) for uid in range(3000)]
    assert splits != [hash_split(str(uid), (0.7, 0.1, 0.2), seed=1) for uid in range(3000)]


def test_iu_without_images(tmp_path):
    root = write_openi(tmp_path, images=False)
    with pytest.raises(DataError, match="not found"):
        load_iu_xray(root)
    assert len(load_iu_xray(root, require_images=False)) == 2


@needs_shared
def test_iu_real_reports_parse():
    root = SHARED / "iu_xray_reports"
    recs = load_iu_xray(root, require_images=False, empty_findings="keep")
    assert_schema(recs)
    assert len(recs) == 611 and len({r["study_id"] for r in recs}) == 300
    assert collections.Counter(r["view"] for r in recs) == {"FRONTAL": 309, "LATERAL": 302}
    assert all(r["findings"] for r in recs)
    assert sum(bool(r["impression"]) for r in recs) >= 600
    assert not any("XXXX" in r["findings"] + r["impression"] for r in recs)
    assert any("XXXX" in r["findings"] for r in load_iu_xray(root, require_images=False, deid_tokens="keep"))
    first = next(r for r in recs if r["study_id"] == "15")
    assert first["findings"].startswith("Cardiomediastinal silhouette and pulmonary vasculature")
    assert first["impression"] == "No acute cardiopulmonary findings."


# --------------------------------------------------------------------------- VQA


@needs_shared
def test_vqa_rad_real_sample():
    root = SHARED / "vqa_rad_sample"
    raw = json.loads((root / "VQA_RAD Dataset Public.json").read_text())
    recs = load_vqa_rad(root)
    assert_schema(recs, vqa=True)
    assert len(recs) == 225
    expected = [str(q["answer_type"]).strip().lower() for q in raw]
    assert [r["answer_type"] for r in recs] == expected
    assert collections.Counter(expected) == {"closed": 129, "open": 96}
    assert all(Path(r["image"]).is_file() for r in recs)
    assert {r["split"] for r in recs} == {"train"}  # the sample has no test_* phrase types
    chest = load_vqa_rad(root, chest_only=True)
    assert 0 < len(chest) < 225
    assert {r["image"] for r in chest} <= {str(root / "VQA_RAD Image Folder" / q["image_name"])
                                           for q in raw if q["image_organ"].strip().upper() == "CHEST"}


def test_vqa_rad_layout_variants(tmp_path):
    tiny_image(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    tiny_image(tmp_path / "VQA_RAD Image Folder" / "synpic2.jpg")
    items = [
        {"qid": 1, "image_name": "synpic1.jpg", "image_organ": "CHEST", "question": "Is this normal?",
         "answer": "Yes", "answer_type": "CLOSED", "phrase_type": "freeform"},
        {"qid": "2", "image_name": "synpic1.jpg", "image_organ": "CHEST", "question": "How many?",
         "answer": 2, "answer_type": "open ", "phrase_type": "test_freeform"},
        {"qid": "0a1b", "image_name": "synpic2.jpg", "image_organ": "HEAD", "question": "Which lobe?",
         "answer": "left", "answer_type": "Closed", "phrase_type": "test_para"},
    ]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
    recs = load_vqa_rad(tmp_path)
    assert [(r["qid"], r["answer_type"], r["split"], r["answer"]) for r in recs] == [
        ("1", "closed", "train", "Yes"), ("2", "open", "test", "2"), ("0a1b", "closed", "test", "left")]
    assert recs[1]["text"] == "2" and recs[0]["question"] == "Is this normal?"
    assert [r["qid"] for r in load_vqa_rad(tmp_path, split="test", organs=["chest"])] == ["2"]


def write_slake(root: Path):
    rows = {
        "train.json": [
            {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Is the lung healthy?", "answer": "No",
             "answer_type": "CLOSED", "q_lang": "en", "qid": 10, "content_type": "Abnormality",
             "modality": "X-Ray", "location": "Lung"},
            {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "肺部健康吗?", "answer": "不",
             "answer_type": "CLOSED", "q_lang": "zh", "qid": 11, "content_type": "Abnormality",
             "modality": "X-Ray", "location": "Lung"},
            {"img_id": 2, "img_name": "xmlab2/source.jpg", "question": "What organ is shown?",
             "answer": "Brain", "answer_type": "OPEN", "q_lang": "en", "qid": 12, "content_type": "Organ",
             "modality": "MRI", "location": "Brain"},
        ],
        "validate.json": [
            {"img_id": 3, "img_name": "xmlab3/source.jpg", "question": "Where is the nodule?",
             "answer": "Right Lung, Upper Left", "answer_type": "OPEN", "q_lang": "en", "qid": 20,
             "content_type": "Position", "modality": "CT", "location": "Chest_lung"},
        ],
        "test.json": [
            {"img_id": 4, "img_name": "xmlab4/source.jpg", "question": "Is there cardiomegaly?",
             "answer": "Yes", "answer_type": "CLOSED", "q_lang": "en", "qid": 30,
             "content_type": "Abnormality", "modality": "X-Ray", "location": "Chest_heart"},
        ],
    }
    for name, items in rows.items():
        (root / name).write_text(json.dumps(items, ensure_ascii=False))
        for item in items:
            tiny_image(root / "imgs" / item["img_name"])
    return root


def test_slake_layout_and_filters(tmp_path):
    root = write_slake(tmp_path)
    recs = load_slake(root)
    assert_schema(recs, vqa=True)
    assert [r["qid"] for r in recs] == ["10", "12", "20", "30"]  # English only by default
    assert recs.dropped == {"language_filtered": 1}
    assert [r["split"] for r in recs] == ["train", "train", "validation", "test"]
    assert recs[0]["image"].endswith("imgs/xmlab1/source.jpg") and recs[0]["study_id"] == "1"
    assert len(load_slake(root, languages=None)) == 5
    assert [r["qid"] for r in load_slake(root, modality_filter="xray")] == ["10", "30"]
    assert [r["qid"] for r in load_slake(root, chest_only=True)] == ["10", "20", "30"]
    assert [r["qid"] for r in load_slake(root, split="test")] == ["30"]


# --------------------------------------------------------------------------- tabular


def write_table_images(root: Path, n=6):
    for i in range(n):
        tiny_image(root / "img" / f"{i}.png", value=20 * i)


def test_tabular_csv_with_split_and_chexpert_labels(tmp_path):
    write_table_images(tmp_path)
    header = ["path", "report", "fold", "patient", "study"] + list(CHEXPERT_OBSERVATIONS)
    rows = [",".join(header)]
    for i, fold in enumerate(["train", "Train", "val", "validate", "test", "TEST"]):
        labels = ["1.0" if j == i else ("" if j % 2 else "0") for j in range(14)]
        rows.append(",".join([f"img/{i}.png", f'"Report {i}, fine."', fold, f"P{i // 2}", f"S{i}"] + labels))
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    recs = load_tabular(tmp_path / "t.csv", image_column="path", text_column="report", split_column="fold",
                        subject_column="patient", study_column="study", label_columns="chexpert")
    assert_schema(recs)
    assert [r["split"] for r in recs] == ["train", "train", "validation", "validation", "test", "test"]
    assert recs[0]["image"] == str(tmp_path / "img" / "0.png")
    assert recs[2]["text"] == "Report 2, fine." and recs[2]["subject_id"] == "P1" and recs[2]["study_id"] == "S2"
    assert recs[1]["labels"][1] == 1.0 and recs[1]["labels"][0] == 0.0 and math.isnan(recs[1]["labels"][3])
    assert len(load_tabular(tmp_path / "t.csv", image_column="path", text_column="report",
                            split_column="fold", split="validation")) == 2


def test_tabular_jsonl_hash_split_by_subject(tmp_path):
    write_table_images(tmp_path)
    lines = [json.dumps({"image": f"img/{i}.png", "findings": f"F{i}.", "impression": f"I{i}.",
                         "patient": f"P{i % 2}"}) for i in range(6)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    recs = load_tabular(tmp_path / "t.jsonl", text_column=None, findings_column="findings",
                        impression_column="impression", subject_column="patient")
    assert [r["text"] for r in recs] == [f"F{i}." for i in range(6)]
    assert recs[0]["impression"] == "I0."
    by_patient = collections.defaultdict(set)
    for r in recs:
        by_patient[r["subject_id"]].add(r["split"])
        assert r["split"] == hash_split(r["subject_id"], (0.8, 0.1, 0.1))
    assert all(len(s) == 1 for s in by_patient.values())


def test_tabular_hf_dataset_object_and_saved(tmp_path):
    import datasets

    write_table_images(tmp_path)
    ds = datasets.Dataset.from_dict({"file": [str(tmp_path / "img" / f"{i}.png") for i in range(4)],
                                     "caption": [f"Text {i}." for i in range(4)]})
    dd = datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select([3])})
    recs = load_tabular(dd, image_column="file", text_column="caption")
    assert [r["split"] for r in recs] == ["train", "train", "train", "test"]
    dd.save_to_disk(str(tmp_path / "saved"))
    # the saved folder holds absolute paths to files outside it: allowed only when asked for
    with pytest.raises(DataError, match=r"saved, row 1 of split 'test', column 'file': image path '/.*' is absolute"):
        load_tabular(tmp_path / "saved", image_column="file", text_column="caption", split="test")
    again = load_tabular(tmp_path / "saved", image_column="file", text_column="caption", split="test",
                         allow_outside_root=True)
    assert [r["text"] for r in again] == ["Text 3."]
    assert len(load_tabular(ds, image_column="file", text_column="caption")) == 4


def test_tabular_hf_image_feature_and_vqa_columns(tmp_path):
    import datasets

    pixels = [np.full((6, 8), 40 * i, np.uint8) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "q": ["Is it dark?"] * 3,
         "a": ["yes", "no", "no"], "kind": ["CLOSED", "closed", "Open"]},
        features=datasets.Features({"image": datasets.Image(), "q": datasets.Value("string"),
                                    "a": datasets.Value("string"), "kind": datasets.Value("string")}))
    recs = load_tabular(ds, text_column=None, question_column="q", answer_column="a",
                        answer_type_column="kind")
    assert_schema(recs, vqa=True)
    assert isinstance(recs[1]["image"], np.ndarray) and recs[1]["image"].shape == (6, 8)
    np.testing.assert_allclose(recs[1]["image"], 40 / 255, atol=1e-6)
    assert [r["answer_type"] for r in recs] == ["closed", "closed", "open"]
    assert [r["qid"] for r in recs] == ["1", "2", "3"] and recs[0]["text"] == "yes"


@needs_shared
def test_covid_sample_all_images_load_via_tabular():
    root = SHARED / "covid_cxr_sample"
    recs = load_tabular(root / "metadata.csv", image_column="filename", image_root=root / "images",
                        text_column=None, subject_column="patientid", view_column="view")
    assert_schema(recs)
    assert len(recs) == 84 and not recs.skipped
    images = sorted({r["image"] for r in recs})
    assert len(images) == 80 == len(list((root / "images").iterdir()))
    for path in images:
        pixels = load_image(path)
        assert pixels.ndim == 2 and pixels.dtype == np.float32 and min(pixels.shape) >= 100
        assert 0.0 <= pixels.min() <= pixels.max() <= 1.0 and pixels.max() > pixels.min()
    splits = collections.defaultdict(set)
    for r in recs:
        splits[r["subject_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits.values())  # hash split by patient
