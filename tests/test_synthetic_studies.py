"""Synthetic studies: the lateral view, prior studies with known changes, their report language,
and that the defaults still give the studies they gave before these options existed."""

import hashlib
import json
import math
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from medvlm.data.sources import load_split
from medvlm.data.synthetic import (
    CHANGE_KINDS,
    CHANGING_KINDS,
    make_study,
    save_png_tree,
    synthetic_records,
    synthetic_vqa_records,
)
from medvlm.errors import UserError
from medvlm.metrics.chexpert import label_report
from medvlm.observations import CHEXPERT_OBSERVATIONS

# The report's change sentences, exactly as the change extractor is written against them.
CHANGE_SENTENCES = {
    "new": ("New {}.", "There is a new {}."),
    "worse": ("Interval increase in the {}.", "Worsening {}."),
    "better": ("Interval decrease in the {}.", "Improving {}."),
    "unchanged": ("Unchanged {}.", "Stable {}."),
    "resolved": ("Interval resolution of the previously seen {}.", "The previously seen {} has resolved."),
}
CHANGE_PATTERNS = [(kind, re.compile(re.escape(t).replace(re.escape("{}"), "([a-z ]+?)")))
                   for kind, templates in CHANGE_SENTENCES.items() for t in templates]
CHANGE_WORDS = re.compile(r"\b(new|interval|worsening|improving|unchanged|stable|previously|resolved)\b", re.I)
LADDERS = {"pleural_effusion": ("small", "moderate", "large"), "cardiomegaly": ("mild", "moderate", "severe"),
           "pneumothorax": ("small", "moderate", "large"), "edema": ("mild", "moderate")}
KIND_OF_OBSERVATION = {"Pleural Effusion": "pleural_effusion", "Cardiomegaly": "cardiomegaly",
                       "Lung Opacity": "lung_opacity", "Consolidation": "lung_opacity",
                       "Pneumothorax": "pneumothorax", "Edema": "edema", "Atelectasis": "atelectasis"}


@pytest.fixture(scope="module")
def studies():
    """Two views, half of them with a prior, at 64 px."""
    return [make_study(i, seed=3, image_size=64, views=2, prior_share=0.5) for i in range(600)]


@pytest.fixture(scope="module")
def with_prior(studies):
    return [s for s in studies if s["prior"] is not None]


def _same_labels(a, b) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def _kind(name: str) -> str:
    return name.removesuffix("_left").removesuffix("_right")


def _severity(meta: list[dict], kind: str):
    return next((m["severity"] for m in meta if _kind(m["name"]) == kind), None)


# ------------------------------------------------------------------ defaults and determinism

def _fingerprint(studies) -> tuple[str, list[int], list[int]]:
    digest = hashlib.sha256()
    for st in studies:
        labels = [None if math.isnan(x) else x for x in st["labels"]]
        digest.update(json.dumps([st["text"], labels, st["meta"], st["study_id"], st["subject_id"], st["view"],
                                  sorted(st["masks"])]).encode())
    return (digest.hexdigest(), [int(st["image"].astype(int).sum()) for st in studies],
            [sum(int(m.sum()) for m in st["masks"].values()) for st in studies])


def test_default_studies_are_what_they_were_before_views_and_priors():
    """Computed with make_study as it was before views and priors were added: the reports, labels
    and meta exactly; the pixels by their sums, which survive a last-bit difference in a CPU's
    float functions but not a change in what is drawn."""
    digest, image_sums, mask_sums = _fingerprint([make_study(i, seed=1, image_size=32) for i in range(30)])
    assert digest == "8da7330521cf2fdc15fd5f30b0f13b20a6548a11af8dfe0f4d4e0623d50c5161"
    expected_images = [104933, 115931, 110395, 102920, 91519, 108712, 112399, 107471, 102465, 110827, 104500,
                       111978, 82249, 105202, 115640, 87398, 119875, 115561, 96489, 93647, 132823, 105656, 109203,
                       120383, 105923, 102186, 113483, 132138, 96003, 118532]
    expected_masks = [23, 104, 109, 190, 0, 74, 289, 0, 0, 0, 0, 148, 17, 77, 0, 0, 175, 54, 137, 27, 0, 0, 0, 111,
                      130, 0, 38, 91, 0, 137]
    assert np.allclose(image_sums, expected_images, rtol=1e-3, atol=0)
    assert np.allclose(mask_sums, expected_masks, rtol=0.02, atol=2)


def test_options_leave_the_pa_film_as_it_is(studies):
    for index, study in enumerate(studies[:60]):
        plain = make_study(index, seed=3, image_size=64)
        assert np.array_equal(study["image"], plain["image"]) and study["images"][0]["image"] is study["image"]
        assert study["masks"].keys() == plain["masks"].keys()
        assert all(np.array_equal(study["masks"][k], plain["masks"][k]) for k in plain["masks"])
        assert study["meta"] == plain["meta"]
        if study["prior"] is None:  # no prior: the report is the plain one, word for word
            assert study["text"] == plain["text"] and _same_labels(study["labels"], plain["labels"])


def test_studies_are_deterministic_and_their_reports_do_not_depend_on_the_size(studies):
    for index in range(12):
        again, small = (make_study(index, seed=3, image_size=size, views=2, prior_share=0.5) for size in (64, 32))
        study = studies[index]
        assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(study["images"], again["images"]))
        assert study["text"] == again["text"] == small["text"] and study["changes"] == small["changes"]
        if study["prior"]:
            assert study["prior"]["text"] == small["prior"]["text"]
            assert all(np.array_equal(a["image"], b["image"])
                       for a, b in zip(study["prior"]["images"], again["prior"]["images"]))


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        make_study(0, views=3)
    with pytest.raises(ValueError):
        make_study(0, prior_share=1.5)


# ------------------------------------------------------------------ the lateral view

def test_record_keys_and_formats(studies):
    for study in studies[:50]:
        assert [i["view"] for i in study["images"]] == ["PA", "LATERAL"]
        lateral = study["images"][1]["image"]
        assert lateral.shape == (64, 64) and lateral.dtype == np.uint8 and lateral.std() > 10
        assert set(study["lateral_masks"]) == set(study["masks"])
        assert all(m.shape == (64, 64) and m.dtype == bool for m in study["lateral_masks"].values())
        assert set(study["changes"].values()) <= set(CHANGE_KINDS)
        prior = study["prior"]
        if prior is not None:
            assert prior["study_id"] == f"{study['study_id']}-prior"
            assert [i["view"] for i in prior["images"]] == ["PA", "LATERAL"]
            assert {"text", "findings", "impression", "labels", "meta", "masks", "lateral_masks"} <= set(prior)
            assert prior["text"] == f"FINDINGS: {prior['findings']} IMPRESSION: {prior['impression']}"


def test_lateral_masks_are_drawn_and_the_lateral_is_another_film(studies):
    for study in studies:
        frontal, lateral = (i["image"].astype(int) for i in study["images"])
        assert np.abs(frontal - lateral).mean() > 10
        for record in (study, study["prior"] or {"lateral_masks": {}, "masks": {}}):
            assert set(record["lateral_masks"]) == set(record["masks"])
            for name, mask in record["lateral_masks"].items():
                assert mask.any() and mask.sum() < mask.size / 2, name


def test_lateral_findings_show(studies):
    """Fluid is bright and posterior-inferior, air dark, an enlarged heart larger."""
    heart_area, checked = {}, Counter()
    for study in studies:
        lateral = study["images"][1]["image"]
        for m in study["meta"]:
            mask = study["lateral_masks"][m["name"]]
            if m["name"].startswith("pleural_effusion"):
                rows, columns = np.nonzero(mask)
                assert lateral[mask].mean() > lateral.mean() and rows.mean() > 32
                if m["severity"] == "small":
                    assert columns.mean() > 32, "a small effusion fills the posterior sulcus"
                checked["effusion"] += 1
            if m["name"].startswith("pneumothorax"):
                assert lateral[mask].mean() < lateral.mean()
                checked["pneumothorax"] += 1
            if m["name"] == "cardiomegaly":
                heart_area.setdefault(m["severity"], []).append(mask.sum())
            if m["name"] == "lung_opacity":
                checked["opacity"] += 1
    assert min(checked.values()) > 20
    assert np.mean(heart_area["mild"]) < np.mean(heart_area["moderate"]) < np.mean(heart_area["severe"])


# ------------------------------------------------------------------ priors and changes

def test_prior_share():
    def has_prior(share):
        return [make_study(i, seed=4, image_size=16, prior_share=share)["prior"] is not None for i in range(300)]
    assert not any(has_prior(0.0)) and all(has_prior(1.0))
    some, more = has_prior(0.3), has_prior(0.6)
    assert 0.22 <= np.mean(some) <= 0.38 and 0.52 <= np.mean(more) <= 0.68
    assert all(b for a, b in zip(some, more) if a), "a larger share keeps the smaller one's priors"


def test_prior_is_the_same_patient(with_prior):
    checked = 0
    for study in with_prior[:80]:
        prior = study["prior"]
        assert "-prior" in prior["study_id"] and study["subject_id"].startswith("syn3-p")
        assert not np.array_equal(prior["images"][0]["image"], study["image"])
        unchanged = {KIND_OF_OBSERVATION[o] for o, c in study["changes"].items() if c == "unchanged"}
        kept = {m["name"] for m in study["meta"] if _kind(m["name"]) in unchanged or
                _kind(m["name"]) not in CHANGING_KINDS} - {"cardiomegaly"}
        if prior["meta"]:  # (devices alone are not kept in a prior whose findings are all new)
            assert kept <= {m["name"] for m in prior["meta"]}
        for name in kept & {m["name"] for m in prior["meta"]}:  # drawn in the same place (the pose moves it a little)
            before, now = (np.argwhere(r["masks"][name]).mean(axis=0) for r in (prior, study))
            assert np.abs(before - now).max() < 8, name
            checked += 1
    assert checked > 10


def test_each_change_kind_appears_about_equally(with_prior):
    counts = Counter(change for s in with_prior for change in s["changes"].values())
    assert set(counts) == set(CHANGE_KINDS)
    assert min(counts.values()) >= 0.14 * sum(counts.values()), counts
    by_kind = Counter((KIND_OF_OBSERVATION[o], c) for s in with_prior for o, c in s["changes"].items())
    for kind in CHANGING_KINDS:
        assert all(by_kind[(kind, change)] > 0 for change in CHANGE_KINDS), kind


def test_changes_are_what_was_drawn(with_prior):
    for study in with_prior:
        prior_kinds = {_kind(m["name"]) for m in study["prior"]["meta"]}
        kinds_now = {_kind(m["name"]) for m in study["meta"]}
        for observation, change in study["changes"].items():
            kind = KIND_OF_OBSERVATION[observation]
            assert (kind in prior_kinds) == (change != "new") and (kind in kinds_now) == (change != "resolved")
            if kind in LADDERS and change in ("worse", "better", "unchanged"):
                level = LADDERS[kind].index
                step = level(_severity(study["meta"], kind)) - level(_severity(study["prior"]["meta"], kind))
                assert {"worse": step > 0, "better": step < 0, "unchanged": step == 0}[change], (kind, change)
            sized = kind in ("lung_opacity", "atelectasis", "pleural_effusion", "pneumothorax")
            if sized and change in ("worse", "better"):
                names = [m["name"] for m in study["meta"] if _kind(m["name"]) == kind]
                area_now = sum(study["masks"][n].sum() for n in names)
                area_before = sum(study["prior"]["masks"][n].sum() for n in names)
                assert (area_now > area_before) == (change == "worse"), (kind, change, area_now, area_before)
        for kind in CHANGING_KINDS:
            if kind in kinds_now or kind in prior_kinds:
                assert any(KIND_OF_OBSERVATION[o] == kind for o in study["changes"]), kind


def _stated_changes(impression: str) -> dict[str, str]:
    """observation -> change kind, read from the change sentences with the labeler's help."""
    stated = {}
    for sentence in re.findall(r"[^.]+\.", impression):
        for kind, pattern in CHANGE_PATTERNS:
            match = pattern.fullmatch(sentence.strip())
            if match:
                labels = label_report(match.group(1))
                stated.update({o: kind for o, v in zip(CHEXPERT_OBSERVATIONS, labels) if v in (0.0, 1.0)
                               and o != "No Finding"})
                break
    return stated


def test_report_states_the_changes_in_the_agreed_phrasings(studies):
    for study in studies:
        if study["prior"] is None:
            assert study["changes"] == {} and not CHANGE_WORDS.search(study["text"])
            continue
        assert _stated_changes(study["impression"]) == study["changes"], study["impression"]
        assert not CHANGE_WORDS.search(study["findings"]) and not CHANGE_WORDS.search(study["prior"]["text"])
        assert 20 <= len(study["text"].split()) <= 70


def test_labels_are_what_the_labeler_reads(with_prior):
    for study in with_prior:
        assert _same_labels(label_report(study["text"]), study["labels"]), study["text"]
        assert _same_labels(label_report(study["prior"]["text"]), study["prior"]["labels"]), study["prior"]["text"]
        for observation, change in study["changes"].items():
            expected = 0.0 if change == "resolved" else 1.0
            assert study["labels"][CHEXPERT_OBSERVATIONS.index(observation)] == expected


def test_the_change_extractor_reads_the_changes_back(with_prior):
    changes = pytest.importorskip("medvlm.metrics.chexpert.changes")
    for study in with_prior:
        assert changes.change_labels(study["text"]) == study["changes"], study["text"]


# ------------------------------------------------------------------ records, files, options

def test_records_drop_every_mask_unless_asked():
    records = synthetic_records(6, seed=2, image_size=32, views=2, prior_share=1.0)
    assert all("masks" not in r and "lateral_masks" not in r for r in records)
    assert all("masks" not in r["prior"] and "lateral_masks" not in r["prior"] for r in records)
    kept = synthetic_records(2, seed=2, image_size=32, views=2, prior_share=1.0, with_masks=True)
    assert all("lateral_masks" in r and "masks" in r["prior"] for r in kept)


def test_save_png_tree_writes_lateral_and_prior_films(tmp_path):
    records = synthetic_records(3, seed=2, image_size=32, views=2, prior_share=1.0)
    saved = save_png_tree(records, tmp_path)
    for original, record in zip(records, saved):
        assert record["image"] == record["images"][0]["image"] == str(tmp_path / f"{record['study_id']}.png")
        assert record["images"][1]["image"] == str(tmp_path / f"{record['study_id']}-lateral.png")
        pairs = list(zip(original["images"], record["images"])) + list(zip(original["prior"]["images"],
                                                                             record["prior"]["images"]))
        assert len(pairs) == 4
        for before, after in pairs:
            assert after["view"] == before["view"]
            assert np.array_equal(np.asarray(Image.open(after["image"])), before["image"])
    assert isinstance(records[0]["prior"]["images"][0]["image"], np.ndarray), "the input is left as it was"


def test_vqa_records_carry_views_and_priors():
    records = synthetic_vqa_records(4, seed=2, image_size=32, views=2, prior_share=1.0)
    assert records and all(len(r["images"]) == 2 and r["prior"] is not None for r in records)
    assert all("masks" not in r and "lateral_masks" not in r for r in records)


def test_load_split_passes_the_options():
    options = {"num_train": 3, "num_validation": 2, "num_test": 2, "views": 2, "prior_share": 1.0}
    records = load_split("synthetic", "validation", image_size=32, options=options)
    assert len(records) == 2 and all(len(r["images"]) == 2 and r["prior"] for r in records)
    plain = load_split("synthetic", "validation", image_size=32, options={"num_train": 3, "num_validation": 2})
    assert all(len(r["images"]) == 1 and r["prior"] is None for r in plain)
    for bad in ({"views": 3}, {"prior_share": 2}, {"prior_share": "half"}, {"priors": 1}):
        with pytest.raises(UserError):
            load_split("synthetic", "train", image_size=32, options={"num_train": 2, **bad})
