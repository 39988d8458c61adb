"""The built-in synthetic dataset: determinism, shapes, label/report agreement, mask placement,
finding rates and VQA balance."""

import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from medvlm.data.synthetic import (
    FINDINGS,
    SIDE_ANSWERS,
    SIZE_ANSWERS,
    YES_NO_ANSWERS,
    _sample_anatomy,
    make_study,
    save_png_tree,
    synthetic_records,
    synthetic_splits,
    synthetic_vqa_records,
)
from medvlm.metrics.chexpert import label_report
from medvlm.observations import CHEXPERT_OBSERVATIONS

OBS = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}
STUDY_KEYS = {"image", "text", "findings", "impression", "labels", "masks", "study_id", "subject_id", "view",
              "split", "meta", "images", "prior", "changes"}
# Words the report must use for each observation it states (positively or negatively).
OBSERVATION_WORDS = {
    "Cardiomegaly": ("cardiomegaly", "heart size", "cardiac silhouette", "cardiomediastinal silhouette"),
    "Enlarged Cardiomediastinum": ("cardiomediastinal silhouette",),
    "Lung Lesion": ("nodule",),
    "Lung Opacity": ("opacity",),
    "Edema": ("edema",),
    "Consolidation": ("consolidation",),
    "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",),
    "Pleural Effusion": ("effusion",),
    "Support Devices": ("tube", "catheter", "pacemaker", "devices"),
}
FINDING_WORDS = {
    "pleural_effusion_left": "effusion", "pleural_effusion_right": "effusion", "cardiomegaly": "",
    "lung_opacity": "opacity", "nodule": "nodule", "pneumothorax_left": "pneumothorax",
    "pneumothorax_right": "pneumothorax", "edema": "edema", "atelectasis": "atelectasis",
    "endotracheal_tube": "endotracheal tube", "central_venous_catheter": "central venous catheter",
    "pacemaker": "pacemaker",
}


@pytest.fixture(scope="module")
def studies():
    """Enough studies at 64 px that every finding shows up many times."""
    return [make_study(i, seed=3, image_size=64) for i in range(1000)]


def _same_labels(a, b) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


# ------------------------------------------------------------------ determinism and shapes

def test_same_seed_gives_identical_studies_and_another_seed_differs():
    first, again, other = make_study(5, seed=1), make_study(5, seed=1), make_study(5, seed=2)
    assert np.array_equal(first["image"], again["image"])
    assert first["text"] == again["text"] and _same_labels(first["labels"], again["labels"])
    assert first["masks"].keys() == again["masks"].keys()
    assert all(np.array_equal(first["masks"][k], again["masks"][k]) for k in first["masks"])
    assert not np.array_equal(first["image"], other["image"])
    texts = {make_study(i, seed=1)["text"] for i in range(10)} ^ {make_study(i, seed=2)["text"] for i in range(10)}
    assert texts, "a different seed must change the reports too"


@pytest.mark.parametrize("size", [64, 128, 224])
def test_image_and_mask_shapes_and_types(size):
    for index in range(12):
        study = make_study(index, image_size=size)
        assert set(study) == STUDY_KEYS
        assert study["image"].shape == (size, size) and study["image"].dtype == np.uint8
        assert study["image"].std() > 10, "a drawn chest, not a flat image"
        for name, mask in study["masks"].items():
            assert name in FINDINGS
            assert mask.shape == (size, size) and mask.dtype == bool
        assert len(study["labels"]) == len(CHEXPERT_OBSERVATIONS)
        assert study["view"] == "PA" and study["split"] == ""
        assert len(study["images"]) == 1 and study["images"][0]["view"] == "PA"
        assert study["images"][0]["image"] is study["image"]
        assert study["prior"] is None and study["changes"] == {}


def test_report_and_labels_do_not_depend_on_image_size():
    for index in range(20):
        small, large = make_study(index, image_size=64), make_study(index, image_size=224)
        assert small["text"] == large["text"]
        assert _same_labels(small["labels"], large["labels"])
        assert small["meta"] == large["meta"]


# ------------------------------------------------------------------ reports and labels

def test_text_is_findings_then_impression(studies):
    for study in studies[:100]:
        assert study["text"] == f"FINDINGS: {study['findings']} IMPRESSION: {study['impression']}"
        assert 20 <= len(study["text"].split()) <= 70


def test_no_finding_iff_nothing_drawn(studies):
    for study in studies:
        no_finding = study["labels"][OBS["No Finding"]]
        if study["meta"]:
            assert math.isnan(no_finding)
            assert any(study["labels"][i] == 1.0 for i in range(1, len(CHEXPERT_OBSERVATIONS)))
        else:
            assert no_finding == 1.0
            assert not any(study["labels"][i] == 1.0 for i in range(1, len(CHEXPERT_OBSERVATIONS)))


def test_labels_are_what_the_report_says(studies):
    for study in studies[:400]:
        text = study["text"].lower()
        for observation, words in OBSERVATION_WORDS.items():
            label = study["labels"][OBS[observation]]
            named = any(word in text for word in words)
            if math.isnan(label):
                assert not named, (observation, text)
            else:
                assert named, (observation, text)
        for observation in ("Pneumonia", "Pleural Other", "Fracture"):
            assert math.isnan(study["labels"][OBS[observation]])


def test_rule_based_labeler_reads_the_record_labels_back(studies):
    for study in studies[:400]:
        assert _same_labels(label_report(study["text"]), study["labels"]), study["text"]


def test_every_present_finding_is_named_with_its_side(studies):
    for study in studies:
        findings = study["findings"].lower()
        for meta in study["meta"]:
            assert FINDING_WORDS[meta["name"]] in findings
            if meta["name"] == "cardiomegaly":
                assert "cardiomegaly" in findings or "enlarged" in findings
            if meta["side"] in ("left", "right") and meta["name"] not in ("lung_opacity",):
                assert meta["side"] in findings or "bilateral" in findings


def test_normal_reports_repeat_word_for_word(studies):
    normal_texts = Counter(s["text"] for s in studies if not s["meta"])
    assert 2 <= len(normal_texts) <= 4
    assert normal_texts.most_common(1)[0][1] >= 0.3 * sum(normal_texts.values())


# ------------------------------------------------------------------ rates

def _kind(name: str) -> str:
    if name in ("endotracheal_tube", "central_venous_catheter", "pacemaker"):
        return "support_devices"
    return name.removesuffix("_left").removesuffix("_right")


def test_normal_fraction_and_finding_rates(studies):
    normal = sum(not s["meta"] for s in studies) / len(studies)
    assert 0.25 <= normal <= 0.45
    kinds = Counter(kind for s in studies for kind in {_kind(m["name"]) for m in s["meta"]})
    assert len(kinds) == 8
    for kind, count in kinds.items():
        assert count / len(studies) >= 0.08, kind
    for study in studies:
        kinds_here = {_kind(m["name"]) for m in study["meta"]}
        assert len(kinds_here) <= 3
        assert kinds_here != {"support_devices"}, "devices come with a pathology"


# ------------------------------------------------------------------ masks

def test_masks_match_meta_and_are_not_empty(studies):
    for study in studies:
        assert set(study["masks"]) == {m["name"] for m in study["meta"]}
        for mask in study["masks"].values():
            assert mask.any()
            assert mask.sum() < mask.size / 2


def test_lateral_masks_lie_on_the_patients_side(studies):
    """Radiological convention: the patient's left is on the image right."""
    checked = 0
    for study in studies:
        width = study["image"].shape[1]
        for meta in study["meta"]:
            if meta["side"] not in ("left", "right") or meta["name"] == "central_venous_catheter":
                continue  # a catheter crosses to the superior vena cava, right of the midline
            columns = np.nonzero(study["masks"][meta["name"]])[1]
            centroid = columns.mean() + 0.5
            if meta["side"] == "left":
                assert centroid > width / 2, meta
            else:
                assert centroid < width / 2, meta
            checked += 1
    assert checked > 100


def test_cardiomegaly_means_cardiothoracic_ratio_above_half(studies):
    ratios = [m["cardiothoracic_ratio"] for s in studies for m in s["meta"] if m["name"] == "cardiomegaly"]
    assert ratios and min(ratios) > 0.5
    rng = np.random.default_rng(0)
    normal = [_sample_anatomy(rng) for _ in range(200)]
    assert max(a.heart_width / a.thorax_width for a in normal) < 0.5


def test_pneumothorax_is_darker_than_the_rest_of_its_lung():
    for index in range(400):
        study = make_study(index, image_size=128)
        for meta in study["meta"]:
            if meta["name"].startswith("pneumothorax"):
                air = study["masks"][meta["name"]]
                assert study["image"][air].mean() < study["image"].mean()
                return
    pytest.fail("no pneumothorax in 400 studies")


# ------------------------------------------------------------------ records, splits, files

def test_records_and_splits_are_disjoint_and_labelled():
    splits = synthetic_splits(6, 3, 4, seed=0, image_size=32)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "validation": 3, "test": 4}
    ids = [r["study_id"] for records in splits.values() for r in records]
    assert len(set(ids)) == len(ids)
    subjects = [r["subject_id"] for records in splits.values() for r in records]
    assert len(set(subjects)) == len(subjects)
    assert all(r["split"] == name for name, records in splits.items() for r in records)
    assert all("masks" not in r for records in splits.values() for r in records)
    # the same ranges as asking for each split by start index
    validation = synthetic_records(3, seed=0, image_size=32, split="validation", start_index=6)
    assert [r["text"] for r in validation] == [r["text"] for r in splits["validation"]]
    with_masks = synthetic_records(2, image_size=32, with_masks=True)
    assert all("masks" in r for r in with_masks)


def test_save_png_tree_writes_readable_pngs(tmp_path):
    records = synthetic_records(3, image_size=64)
    saved = save_png_tree(records, tmp_path / "pngs")
    for original, record in zip(records, saved):
        assert isinstance(record["image"], str) and record["text"] == original["text"]
        assert np.array_equal(np.asarray(Image.open(record["image"])), original["image"])
        assert record["images"] == [{"image": record["image"], "view": "PA"}], "paths, not pixels"
    assert isinstance(records[0]["image"], np.ndarray), "the input records are left as they were"


# ------------------------------------------------------------------ VQA

@pytest.fixture(scope="module")
def vqa():
    return synthetic_vqa_records(400, seed=1, image_size=32, split="validation", questions_per_study=4)


def test_vqa_records_carry_the_study_and_a_question(vqa):
    assert {"question", "answer", "answer_type", "qid", "text", "labels", "meta", "study_id"} <= set(vqa[0])
    assert len({r["qid"] for r in vqa}) == len(vqa)
    assert all(r["split"] == "validation" for r in vqa)
    assert max(Counter(r["study_id"] for r in vqa).values()) <= 4
    assert all(r["answer"] == r["answer"].lower() and r["answer"] for r in vqa)


def test_vqa_yes_no_is_balanced(vqa):
    answers = [r["answer"] for r in vqa if r["answer"] in YES_NO_ANSWERS]
    assert 0.4 <= answers.count("yes") / len(answers) <= 0.6
    per_question = {}
    for r in vqa:
        if r["answer"] in YES_NO_ANSWERS:
            per_question.setdefault(r["question"], []).append(r["answer"] == "yes")
    for question, yes in per_question.items():
        if len(yes) >= 40:
            assert 0.25 <= np.mean(yes) <= 0.75, question


def test_vqa_answers_come_from_the_expected_sets(vqa):
    for r in vqa:
        question, answer = r["question"], r["answer"]
        if question.startswith(("Is ", "Are ")):
            assert answer in YES_NO_ANSWERS and r["answer_type"] == "closed"
        elif question.startswith("Which "):
            assert answer in SIDE_ANSWERS and r["answer_type"] == "closed"
        elif question.startswith(("How severe", "How large is the p")):
            assert answer in SIZE_ANSWERS and r["answer_type"] == "open"
        else:
            assert r["answer_type"] == "open"
    kinds = Counter(r["answer_type"] for r in vqa)
    assert kinds["open"] > 0 and kinds["closed"] > 0


def test_vqa_answers_agree_with_the_study(vqa):
    for r in vqa:
        names = {m["name"] for m in r["meta"]}
        if r["question"] == "Is this chest x-ray normal?":
            assert (r["answer"] == "yes") == (not names)
        if r["question"] == "Is there a pneumothorax?":
            assert (r["answer"] == "yes") == bool(names & {"pneumothorax_left", "pneumothorax_right"})
        if r["question"] == "Which side is the pleural effusion on?":
            sides = {n.rsplit("_", 1)[1] for n in names if n.startswith("pleural_effusion")}
            assert r["answer"] == ("both" if len(sides) == 2 else sides.pop())
