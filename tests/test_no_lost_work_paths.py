"""Issue 15, paths stay inside the dataset: an image path read from a dataset's files that is
absolute or leads out of its root (through '..' or a symbolic link) is refused, naming the file,
the line and the path, unless data.allow_outside_root is true."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlm.config import load_config
from medvlm.data.records import DataError, PathGuard
from medvlm.data.sources import load_split
from medvlm.data.tables import load_tabular
from medvlm.errors import UserError


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12), 128, np.uint8)).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    """tmp/ds (the root, with ok.png) and tmp/secret.png outside it."""
    png(tmp_path / "ds" / "ok.png")
    png(tmp_path / "secret.png")
    return tmp_path / "ds"


def table(root: Path, *paths: str) -> Path:
    (root / "t.csv").write_text("image,text\n" + "".join(f"{p},A report.\n" for p in paths))
    return root / "t.csv"


def test_a_path_leading_out_of_the_root_is_refused(dataset):
    csv = table(dataset, "ok.png", "../../../../etc/passwd")
    with pytest.raises(DataError, match=r"t\.csv, line 3, column 'image': image path '\.\./\.\./\.\./\.\./etc/passwd' "
                                        r"leads outside the dataset root"):
        load_tabular(csv)
    records = load_tabular(csv, on_error="skip")
    assert [Path(r["image"]).name for r in records] == ["ok.png"] and records.skipped == {"outside_root": 1}
    (dataset / "sub").mkdir()
    assert len(load_tabular(table(dataset, "sub/../ok.png"))) == 1  # '..' that stays inside is fine


def test_an_absolute_path_is_refused_unless_allowed(dataset):
    csv = table(dataset, "/etc/hostname")
    with pytest.raises(DataError, match=r"t\.csv, line 2, column 'image': image path '/etc/hostname' is absolute; "
                                        r".*data\.allow_outside_root: true allows it"):
        load_tabular(csv)
    secret = str(dataset.parent / "secret.png")
    assert load_tabular(table(dataset, secret), allow_outside_root=True)[0]["image"] == secret
    assert load_tabular(table(dataset, "../secret.png"), allow_outside_root=True)[0]["image"].endswith("secret.png")


def test_symbolic_links_are_followed(dataset):
    os.symlink(dataset.parent / "secret.png", dataset / "link.png")
    os.symlink(dataset.parent, dataset / "up")
    os.symlink(dataset / "ok.png", dataset / "inside.png")
    for path in ("link.png", "up/secret.png"):
        with pytest.raises(DataError, match=rf"image path '{path}' leads outside the dataset root .*symbolic link"):
            load_tabular(table(dataset, path))
    assert len(load_tabular(table(dataset, "inside.png"))) == 1


def test_jsonl_and_an_image_root_option(dataset):
    (dataset / "t.jsonl").write_text(json.dumps({"image": "../secret.png", "text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl, line 1, field 'image': image path '\.\./secret\.png' leads outside"):
        load_tabular(dataset / "t.jsonl")
    # image_root names the root: paths resolve inside it
    (dataset / "t.jsonl").write_text(json.dumps({"image": "secret.png", "text": "x"}) + "\n")
    assert len(load_tabular(dataset / "t.jsonl", image_root=dataset.parent)) == 1


def vqa_rad(root: Path, name: str) -> dict:
    png(root / "VQA_RAD Image Folder" / "a.jpg")
    item = {"qid": 1, "image_name": name, "question": "q?", "answer": "yes", "answer_type": "CLOSED"}
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps([item]))
    return {}


def slake(root: Path, name: str) -> dict:
    item = {"qid": 1, "img_id": 1, "img_name": name, "question": "q?", "answer": "yes", "answer_type": "CLOSED"}
    for file in ("train.json", "validate.json", "test.json"):
        (root / file).write_text(json.dumps([item] if file == "train.json" else []))
    return {}


def iu_r2gen(root: Path, name: str) -> dict:
    item = {"id": "CXR1", "report": "the lungs are clear .", "image_path": [name]}
    (root / "annotation.json").write_text(json.dumps({"train": [item]}))
    return {}


def iu_openi(root: Path, name: str) -> dict:
    (root / "indiana_reports.csv").write_text("uid,findings,impression\n1,Lungs are clear.,Normal.\n")
    (root / "indiana_projections.csv").write_text(f"uid,filename,projection\n1,{name},Frontal\n")
    return {"split_fractions": (1.0, 0.0, 0.0)}


def mimic(root: Path, name: str) -> dict:
    import zipfile

    subject = name  # the subject id names the folder: files/p{subject[:2]}/p{subject}
    with zipfile.ZipFile(root / "reports.zip", "w") as z:  # the reports, read from the zip
        z.writestr(f"files/p{subject[:2]}/p{subject}/s5.txt", "FINDINGS: The lungs are clear.")
    (root / "mimic-cxr-2.0.0-split.csv").write_text(f"dicom_id,study_id,subject_id,split\nd0,5,{subject},train\n")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(f"dicom_id,subject_id,study_id,ViewPosition\nd0,{subject},5,PA\n")
    return {"label_source": None, "require_images": False, "reports_path": str(root / "reports.zip")}


def chestxray14(root: Path, name: str) -> dict:
    (root / "images").mkdir()
    (root / "Data_Entry_2017.csv").write_text(f"Image Index,Finding Labels,Patient ID\n{name},No Finding,1\n")
    return {}


@pytest.mark.parametrize("dataset_name, write, escaping, file", [
    ("vqa_rad", vqa_rad, "../../secret.png", "VQA_RAD Dataset Public.json"),
    ("slake", slake, "../../secret.png", "train.json"),
    ("iu_xray", iu_r2gen, "../../secret.png", "annotation.json"),
    ("iu_xray", iu_openi, "../../secret.png", "indiana_projections.csv, line 2"),
    ("mimic_cxr", mimic, "/../../../..", "mimic-cxr-2.0.0-split.csv, line 2"),
    ("chestxray14", chestxray14, "../../secret.png", "Data_Entry_2017.csv, line 2"),
])
def test_every_dataset_loader_keeps_paths_inside(dataset, dataset_name, write, escaping, file):
    options = write(dataset, escaping)
    with pytest.raises(DataError, match=rf"{file}.*leads outside the dataset root") as error:
        load_split(dataset_name, "train", root=str(dataset), options=options)
    assert error.value.reason == "outside_root"
    try:  # allowed: the path is taken; at most the file's absence is a problem now
        load_split(dataset_name, "train", root=str(dataset), options=options, allow_outside_root=True)
    except DataError as err:
        assert err.reason != "outside_root"


def test_allow_outside_root_is_a_data_setting(dataset):
    assert load_config(None).data.allow_outside_root is False
    assert load_config(None, ["data.allow_outside_root=true"]).data.allow_outside_root is True
    with pytest.raises(UserError, match="data.options.allow_outside_root: it is data.allow_outside_root"):
        load_split("csv", "train", root=str(table(dataset, "ok.png")), options={"allow_outside_root": True})


def test_path_guard_resolves_each_folder_once(tmp_path, monkeypatch):
    guard = PathGuard(tmp_path)
    calls = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: calls.append(p) or real(p, **kw))
    paths = [guard(f"images/{i}.png", where="test") for i in range(50)]
    assert paths[3] == tmp_path / "images" / "3.png"
    assert len(calls) == 1  # the root only: folders below it are no links, files are checked with lstat
