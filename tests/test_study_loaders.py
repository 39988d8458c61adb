"""Loaders that yield studies: every image of a study with its view, and the same patient's
previous study as its prior (never from another split), on miniature trees of each layout; and
the old one-image-per-record forms behind their options."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlm.data.iu_xray import load_iu_xray
from medvlm.data.mimic_cxr import load_mimic_cxr
from medvlm.data.records import RECORD_KEYS, DataError, latest_priors
from medvlm.data.tables import load_tabular, read_csv
from medvlm.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
REPORT = " FINDINGS: {text}\n IMPRESSION: Nothing acute.\n"


def tiny(path, value=128, size=(8, 6), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path, format=fmt)
    return path


def ids(records):
    return [r["study_id"] for r in records]


def priors_of(records):
    return {r["study_id"]: (r["prior"] or {}).get("study_id") for r in records}


def image_names(images):
    return [Path(i["image"]).name for i in images]


# --------------------------------------------------------------------------- MIMIC-CXR

# (subject, study, split, StudyDate, StudyTime); each study has a lateral then a PA image
MIMIC = [
    ("10000001", "50000004", "train", "21500301", "101500.0"),  # later study of subject 1, listed first
    ("10000001", "50000001", "train", "21500101", "80000.5"),
    ("10000001", "50000002", "train", "21500105", "90000"),
    ("10000001", "50000003", "train", "21500105", "100000"),  # same date, later time: prior 50000002
    ("10000002", "50000009", "train", "21500102", "120000"),  # another subject, in between by date
    ("10000003", "50000011", "train", "21600101", "0"),
    ("10000003", "50000012", "test", "21600201", "0"),  # latest earlier study is train: no prior
    ("10000003", "50000013", "test", "21600301", "0"),  # prior 50000012 (test)
    ("10000003", "50000014", "train", "21600401", "0"),  # latest earlier is test: none (no going back)
]


def write_mimic(root: Path, *, bad_date_for=None) -> Path:
    split_rows = ["dicom_id,study_id,subject_id,split"]
    meta_rows = ["dicom_id,subject_id,study_id,ViewPosition,StudyDate,StudyTime"]
    for subject, study, split, date, time in MIMIC:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        for kind, view in (("lat", "LATERAL"), ("pa", "PA")):
            dicom = f"{study}-{kind}"
            split_rows.append(f"{dicom},{study},{subject},{split}")
            meta_rows.append(f"{dicom},{subject},{study},{view},{'soon' if study == bad_date_for else date},{time}")
            tiny(folder / f"s{study}" / f"{dicom}.jpg", fmt="JPEG")
        (folder / f"s{study}.txt").write_text(REPORT.format(text=f"Report of {study}."))
    (root / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(split_rows) + "\n")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta_rows) + "\n")
    return root


def test_mimic_studies_with_priors_by_date_within_subject(tmp_path):
    recs = load_mimic_cxr(write_mimic(tmp_path), views="all", studies="all_views", priors=True, split="train")
    assert ids(recs) == ["50000004", "50000001", "50000002", "50000003", "50000009", "50000011", "50000014"]
    for r in recs:
        assert set(RECORD_KEYS) <= set(r)
        assert [i["view"] for i in r["images"]] == ["PA", "LATERAL"]  # frontal first, whatever the file order
        assert image_names(r["images"]) == [f"{r['study_id']}-pa.jpg", f"{r['study_id']}-lat.jpg"]
        assert r["image"] == r["images"][0]["image"] and r["view"] == "PA"
    assert priors_of(recs) == {
        "50000004": "50000003", "50000001": None, "50000002": "50000001",
        "50000003": "50000002",  # same StudyDate, earlier StudyTime
        "50000009": None,  # another subject's studies never count
        "50000011": None, "50000014": None,  # its latest earlier study (50000013) is a test study
    }
    prior = recs[0]["prior"]
    assert prior["text"] == prior["findings"] == "Report of 50000003." and prior["impression"] == "Nothing acute."
    assert image_names(prior["images"]) == ["50000003-pa.jpg", "50000003-lat.jpg"]
    assert [i["view"] for i in prior["images"]] == ["PA", "LATERAL"]


def test_mimic_no_prior_crosses_splits(tmp_path):
    root = write_mimic(tmp_path)
    test = load_mimic_cxr(root, views="all", studies="all_views", priors=True, split="test")
    assert priors_of(test) == {"50000012": None, "50000013": "50000012"}
    every = load_mimic_cxr(root, views="all", studies="all_views", priors=True)
    by_id = {r["study_id"]: r for r in every}
    for r in every:
        if r["prior"] is not None:
            assert by_id[r["prior"]["study_id"]]["split"] == r["split"]
    assert priors_of(every)["50000014"] is None and priors_of(every)["50000012"] is None


def test_mimic_frontal_studies_and_old_forms(tmp_path):
    root = write_mimic(tmp_path)
    frontal = load_mimic_cxr(root, studies="frontal", priors=True, split="train")
    assert all(len(r["images"]) == 1 and r["view"] == "PA" for r in frontal)
    assert image_names(frontal[0]["prior"]["images"]) == ["50000003-pa.jpg"]
    default = load_mimic_cxr(root, split="train")  # as before: one PA image per study, no prior
    assert ids(default) == ids(frontal) and all(r["prior"] is None and len(r["images"]) == 1 for r in default)
    per_image = load_mimic_cxr(root, views="all", images_per_study="all", split="train")
    assert len(per_image) == 14 and {r["view"] for r in per_image} == {"PA", "LATERAL"}
    assert all(r["prior"] is None for r in per_image)
    with pytest.raises(UserError, match="priors need studies="):
        load_mimic_cxr(root, priors=True)
    with pytest.raises(UserError, match="images_per_study applies to studies='per_image'"):
        load_mimic_cxr(root, studies="all_views", images_per_study="all")
    with pytest.raises(UserError, match="studies must be one of"):
        load_mimic_cxr(root, studies="both")


def test_mimic_bad_study_date(tmp_path):
    root = write_mimic(tmp_path, bad_date_for="50000002")
    with pytest.raises(DataError, match=r"metadata\.csv, line \d+, column 'StudyDate': 'soon' is not a date"):
        load_mimic_cxr(root, views="all", studies="all_views", priors=True)
    recs = load_mimic_cxr(root, views="all", studies="all_views", priors=True, split="train", on_error="skip")
    assert "50000002" not in ids(recs) and len(recs) == 6 and recs.skipped == {"bad_field": 2}
    assert priors_of(recs)["50000003"] == "50000001"  # the bad study is no study at all
    assert len(load_mimic_cxr(root, views="all", studies="all_views", split="train")) == 7  # dates unread


def test_latest_priors_rule():
    studies = [("a", "p", "train", 3), ("b", "p", "train", 1), ("c", "p", "train", 3), ("d", "q", "train", 2),
               ("e", "p", "test", 4), ("f", "p", "test", 5)]
    assert latest_priors(studies) == {"b": None, "a": "b", "c": "b", "d": None, "e": None, "f": "e"}


# --------------------------------------------------------------------------- IU X-ray


def test_iu_r2gen_both_views_of_a_study(tmp_path):
    ann = {"train": [], "val": [], "test": []}
    for i, split in enumerate(["train", "val", "test"]):
        sid = f"CXR{i}_IM-000{i}"
        for position in (0, 1):
            tiny(tmp_path / "images" / sid / f"{position}.png", value=10 * i + position)
        ann[split].append({"id": sid, "report": f"the lungs are clear . study {i} .",
                           "image_path": [f"{sid}/0.png", f"{sid}/1.png"], "split": split})
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    recs = load_iu_xray(tmp_path, studies="all_views")
    assert ids(recs) == ["CXR0_IM-0000", "CXR1_IM-0001", "CXR2_IM-0002"]
    assert [r["split"] for r in recs] == ["train", "validation", "test"]
    for r in recs:
        assert [i["view"] for i in r["images"]] == ["FRONTAL", "LATERAL"] and r["prior"] is None
        assert [Path(i["image"]).parts[-2:] for i in r["images"]] == [(r["study_id"], "0.png"),
                                                                      (r["study_id"], "1.png")]
    assert recs[1]["text"] == "the lungs are clear. study 1."
    frontal = load_iu_xray(tmp_path, studies="frontal")
    assert [len(r["images"]) for r in frontal] == [1, 1, 1] and {r["view"] for r in frontal} == {"FRONTAL"}
    assert len(load_iu_xray(tmp_path)) == 6  # the default: one record per image, as before
    (tmp_path / "images" / "CXR1_IM-0001" / "1.png").unlink()
    kept = load_iu_xray(tmp_path, studies="all_views", on_error="skip")
    assert [len(r["images"]) for r in kept] == [2, 1, 2] and kept.skipped == {"missing_file": 1}


def write_openi(root: Path, reports: list[dict], projections: list[dict]) -> Path:
    for name, rows in (("indiana_reports.csv", reports), ("indiana_projections.csv", projections)):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def test_iu_openi_both_views(tmp_path):
    reports = [{"uid": "1", "findings": "Lungs are clear.", "impression": "Normal."},
               {"uid": "2", "findings": "Small effusion.", "impression": "Effusion."}]
    projections = [{"uid": "1", "filename": "1_IM-0001-4001.dcm.png", "projection": "Lateral"},
                   {"uid": "1", "filename": "1_IM-0001-1001.dcm.png", "projection": "Frontal"},
                   {"uid": "2", "filename": "2_IM-0002-1001.dcm.png", "projection": "Frontal"}]
    write_openi(tmp_path, reports, projections)
    for row in projections:
        tiny(tmp_path / "images" / "images_normalized" / row["filename"])
    recs = load_iu_xray(tmp_path, studies="all_views", split_fractions=(1.0, 0.0, 0.0))
    assert ids(recs) == ["1", "2"]
    assert image_names(recs[0]["images"]) == ["1_IM-0001-1001.dcm.png", "1_IM-0001-4001.dcm.png"]
    assert [i["view"] for i in recs[0]["images"]] == ["FRONTAL", "LATERAL"]
    assert recs[0]["text"] == "Lungs are clear." and len(recs[1]["images"]) == 1
    assert len(load_iu_xray(tmp_path, split_fractions=(1.0, 0.0, 0.0))) == 3
    assert ids(load_iu_xray(tmp_path, studies="all_views", views="lateral", split_fractions=(1.0, 0.0, 0.0))) == ["1"]


@needs_shared
def test_iu_real_two_view_studies_through_openi_layout(tmp_path):
    """The two real IU studies in ../shared/data load as frontal + lateral studies with their reports."""
    wanted = {"7": "CXR7_IM-2263", "1900": "CXR1900_IM-0584"}
    dev = SHARED / "iu_xray_reports_dev"
    reports = [r for r in read_csv(dev / "indiana_reports.csv").rows if r["uid"] in wanted]
    projections = [r for r in read_csv(dev / "indiana_projections.csv").rows if r["uid"] in wanted]
    assert len(reports) == 2 and len(projections) == 4
    write_openi(tmp_path, reports, projections)
    for row in projections:  # Kaggle name 7_IM-2263-1001.dcm.png <- NLMCXR name CXR7_IM-2263-1001.png
        number = row["filename"].split("-")[-1].split(".")[0]
        source = SHARED / "iu_xray_images_sample" / f"{wanted[row['uid']]}-{number}.png"
        target = tmp_path / "images" / "images_normalized" / row["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    recs = load_iu_xray(tmp_path, studies="all_views", split_fractions=(1.0, 0.0, 0.0), verify_images=True)
    assert sorted(ids(recs)) == ["1900", "7"] and not recs.skipped
    for r in recs:
        assert [i["view"] for i in r["images"]] == ["FRONTAL", "LATERAL"]
        assert image_names(r["images"])[0].endswith("-1001.dcm.png")
        assert image_names(r["images"])[1].endswith("-2001.dcm.png")
    seven = next(r for r in recs if r["study_id"] == "7")
    assert seven["findings"].startswith("The cardiac contours are normal.") and "XXXX" not in seven["text"]
    assert seven["impression"].startswith("Basilar atelectasis.")


# --------------------------------------------------------------------------- CSV / JSONL


def test_csv_several_image_columns(tmp_path):
    for name in ("a_pa.png", "a_lat.png", "b_pa.png"):
        tiny(tmp_path / "img" / name)
    (tmp_path / "t.csv").write_text("lateral,frontal,report,split\n"
                                    "img/a_lat.png,img/a_pa.png,Report a.,train\n"
                                    ",img/b_pa.png,Report b.,test\n")
    options = dict(image_column=["lateral", "frontal"], image_views=["LATERAL", "PA"], text_column="report",
                   split_column="split")
    recs = load_tabular(tmp_path / "t.csv", studies="all_views", **options)
    assert [image_names(r["images"]) for r in recs] == [["a_pa.png", "a_lat.png"], ["b_pa.png"]]
    assert [i["view"] for i in recs[0]["images"]] == ["PA", "LATERAL"] and recs[0]["view"] == "PA"
    assert recs[0]["study_id"] == "img/a_lat.png"  # default study id: the first image column's value
    per_image = load_tabular(tmp_path / "t.csv", **options)  # the default: one record per image
    assert [(Path(r["image"]).name, r["view"]) for r in per_image] == [
        ("a_pa.png", "PA"), ("a_lat.png", "LATERAL"), ("b_pa.png", "PA")]
    assert [r["text"] for r in load_tabular(tmp_path / "t.csv", studies="frontal", **options)] == [
        "Report a.", "Report b."]
    with pytest.raises(UserError, match="image_views names one view per image column"):
        load_tabular(tmp_path / "t.csv", image_column=["lateral", "frontal"], image_views=["PA"])


def test_csv_list_column_with_views(tmp_path):
    for name in ("1.png", "2.png", "3.png"):
        tiny(tmp_path / name)
    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["images", "views", "text"],
                          ['["1.png", "2.png"]', '["LATERAL", "AP"]', "Two views."],
                          ["['3.png']", "['PA']", "One view."],  # Python-style lists (pandas' to_csv)
                          ['["1.png", "3.png"]', '["PA"]', "Views do not match."]])
    with pytest.raises(DataError, match=r"t\.csv, line 4, column 'views': 1 view\(s\) \['PA'\] for 2 image"):
        load_tabular(tmp_path / "t.csv", image_column="images", view_column="views", studies="all_views")
    recs = load_tabular(tmp_path / "t.csv", image_column="images", view_column="views", studies="all_views",
                        on_error="skip")
    assert [image_names(r["images"]) for r in recs] == [["2.png", "1.png"], ["3.png"]]
    assert [i["view"] for i in recs[0]["images"]] == ["AP", "LATERAL"] and recs.skipped == {"bad_field": 1}


def test_jsonl_rows_of_one_study_are_one_study(tmp_path):
    for name in ("s1_pa.png", "s1_lat.png", "s2_ap.png", "s2_ll.png"):
        tiny(tmp_path / "img" / name)
    rows = [{"study": "s1", "patient": "p1", "image": "img/s1_pa.png", "view": "PA", "report": "Study one."},
            {"study": "s2", "patient": "p1", "image": ["img/s2_ll.png", "img/s2_ap.png"], "view": ["LL", "AP"],
             "report": "Study two."},
            {"study": "s1", "patient": "p1", "image": "img/s1_lat.png", "view": "LATERAL", "report": "Study one."}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    options = dict(text_column="report", study_column="study", subject_column="patient", view_column="view")
    recs = load_tabular(tmp_path / "t.jsonl", studies="all_views", **options)
    assert ids(recs) == ["s1", "s2"] and recs[0]["split"] == recs[1]["split"]
    assert [image_names(r["images"]) for r in recs] == [["s1_pa.png", "s1_lat.png"], ["s2_ap.png", "s2_ll.png"]]
    assert [len(load_tabular(tmp_path / "t.jsonl", **options)), recs[1]["view"]] == [4, "AP"]


def write_prior_table(root: Path, rows: list[str], header: str) -> Path:
    for n in range(1, 7):
        tiny(root / f"{n}.png")
    (root / "t.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root / "t.csv"


def test_prior_via_prior_study_column(tmp_path):
    table = write_prior_table(tmp_path, ["1.png,a,,train,Report a.", "2.png,b,a,train,Report b.",
                                         "3.png,c,b,test,Report c.", "4.png,d,c,test,Report d.",
                                         "5.png,e,zz,test,Report e."], "image,study,prior,split,text")
    options = dict(study_column="study", split_column="split", prior_study_column="prior", studies="all_views")
    with pytest.raises(DataError, match=r"t\.csv, line 6, column 'prior': prior study 'zz' is not a study"):
        load_tabular(table, **options)
    recs = load_tabular(table, on_error="skip", **options)
    assert priors_of(recs) == {"a": None, "b": "a", "c": None, "d": "c", "e": None}  # c's prior b: another split
    assert recs.skipped == {"missing_prior": 1} and len(recs) == 5
    d = recs[3]
    assert d["prior"]["text"] == "Report c." and image_names(d["prior"]["images"]) == ["3.png"]
    assert priors_of(load_tabular(table, split="test", on_error="skip", **options)) == {
        "c": None, "d": "c", "e": None}
    with pytest.raises(UserError, match="priors need studies="):
        load_tabular(table, study_column="study", prior_study_column="prior")


def test_prior_via_study_date_and_subject(tmp_path):
    table = write_prior_table(tmp_path, [
        "1.png,a,p1,2020-03-01,08:00,Report a.",
        "2.png,b,p1,2020-01-01,,Report b.",
        "3.png,c,p1,2020-03-01,07:30,Report c.",  # same day, earlier time: the prior of a
        "4.png,d,p2,2020-02-01,,Report d.",  # another patient
        "5.png,e,p1,20200401,,",  # YYYYMMDD; an empty report: dropped, yet still a prior
        "6.png,f,p1,2020-05-01T10:00:00+02:00,,Report f.",
    ], "image,study,patient,date,time,text")
    recs = load_tabular(table, study_column="study", subject_column="patient", study_date_column="date",
                        study_time_column="time", studies="all_views", split_fractions=(1.0, 0.0, 0.0))
    assert priors_of(recs) == {"a": "c", "b": None, "c": "b", "d": None, "f": "e"}
    assert recs.dropped == {"empty_report": 1} and recs[-1]["prior"]["text"] == ""
    bad = write_prior_table(tmp_path, ["1.png,a,p1,2020-13-45,x", "2.png,b,p1,2020-01-01,y"],
                            "image,study,patient,date,text")
    options = dict(study_column="study", subject_column="patient", study_date_column="date", studies="all_views")
    with pytest.raises(DataError, match=r"t\.csv, line 2, column 'date': '2020-13-45' is not a date"):
        load_tabular(bad, **options)
    assert ids(load_tabular(bad, on_error="skip", **options)) == ["b"]
    with pytest.raises(UserError, match="study_date_column needs subject_column"):
        load_tabular(bad, study_date_column="date", studies="all_views")


def test_default_options_keep_the_old_records(tmp_path):
    table = write_prior_table(tmp_path, ["1.png,a,Report a.", "2.png,a,Report a."], "image,study,text")
    recs = load_tabular(table, study_column="study")
    assert [len(r["images"]) for r in recs] == [1, 1] and all(r["prior"] is None for r in recs)
    assert [Path(r["image"]).name for r in recs] == ["1.png", "2.png"]
    assert [len(r["images"]) for r in load_tabular(table, study_column="study", studies="all_views")] == [2]
