"""Synthetic hospitals (medvlm.data.hospitals): option checks, the site partition (disjoint,
deterministic, skewed the profiles' way), site appearance, and report restyling that the
CheXpert-style labeler reads exactly as the original."""

import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from medvlm.data import hospitals
from medvlm.data.hospitals import (
    CLASSES,
    PROFILES,
    SITE_ORDER,
    assign_sites,
    class_frequencies,
    hospital_names,
    restyle_study,
    site_proportions,
    site_summary,
    study_class,
)
from medvlm.data.sources import load_split
from medvlm.data.synthetic import synthetic_records
from medvlm.errors import UserError
from medvlm.metrics.chexpert import change_labels, label_report

SIZE = 32
OPTS = {"num_train": 400, "num_validation": 60, "num_test": 60, "seed": 0, "hospitals": 3}


def _load(split="train", image_size=SIZE, **options):
    return load_split("synthetic", split, image_size=image_size, options={**OPTS, **options})


def _ids(records) -> list[str]:
    return [r["study_id"] for r in records]


def _same_labels(a, b) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def _same_record(a: dict, b: dict) -> bool:
    """Equal keys and values, arrays compared by value (nested in images, prior, masks)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_record(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same_record(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.fixture(scope="module")
def pooled():
    return _load()


@pytest.fixture(scope="module")
def by_site():
    return [_load(hospital=k) for k in range(OPTS["hospitals"])]


@pytest.fixture(scope="module")
def plain():
    options = {k: v for k, v in OPTS.items() if k != "hospitals"}
    return load_split("synthetic", "train", image_size=SIZE, options=options)


# ================================================================== options

@pytest.mark.parametrize("options, key, given", [
    ({"hospitals": 1}, "hospitals", "1"),
    ({"hospitals": 7}, "hospitals", "7"),
    ({"hospitals": "3"}, "hospitals", "'3'"),
    ({"hospitals": True}, "hospitals", "True"),
    ({"hospitals": 3, "hospital": 3}, "hospital", "3"),
    ({"hospitals": 3, "hospital": -1}, "hospital", "-1"),
    ({"hospitals": 3, "hospital": "icu"}, "hospital", "'icu'"),
    ({"hospitals": 0, "hospital": 1}, "hospital", "hospital=1"),
    ({"hospitals": 3, "hospital_skew": 0}, "hospital_skew", "0"),
    ({"hospitals": 3, "hospital_skew": -1.0}, "hospital_skew", "-1.0"),
    ({"hospitals": 3, "hospital_skew": float("inf")}, "hospital_skew", "inf"),
    ({"hospitals": 3, "hospital_skew": "high"}, "hospital_skew", "'high'"),
    ({"hospitals": 3, "vqa": True}, "hospitals", "report data only"),
])
def test_bad_options_are_user_errors_naming_key_and_value(options, key, given):
    with pytest.raises(UserError) as err:
        load_split("synthetic", "train", image_size=SIZE, options={"num_train": 4, **options})
    assert f"data.options.{key}:" in str(err.value) and given in str(err.value)


def test_hospital_names():
    assert hospital_names(3) == ["icu", "outpatient", "general"]
    assert hospital_names(4)[3] == "trauma" and hospital_names(6) == list(SITE_ORDER)
    with pytest.raises(ValueError):
        hospital_names(1)


# ================================================================== the partition

def test_hospitals_zero_is_the_plain_dataset(plain):
    options = {k: v for k, v in OPTS.items() if k != "hospitals"}
    explicit = load_split("synthetic", "train", image_size=SIZE,
                          options={**options, "hospitals": 0, "hospital": None, "hospital_skew": 0.5})
    direct = synthetic_records(OPTS["num_train"], seed=0, image_size=SIZE, split="train")
    assert len(explicit) == len(plain) == len(direct)
    assert all(_same_record(a, b) and _same_record(a, c) for a, b, c in zip(explicit, plain, direct))
    assert "site" not in explicit[0]


def test_sites_partition_the_plain_split(plain, by_site):
    sets = [set(_ids(records)) for records in by_site]
    assert all(a.isdisjoint(b) for a, b in combinations(sets, 2))
    assert set().union(*sets) == set(_ids(plain))
    for k, records in enumerate(by_site):
        assert {r["site"] for r in records} == {hospital_names(3)[k]}
        assert _ids(records) == sorted(_ids(records))  # dataset order


def test_pooled_is_the_union_of_the_sites(pooled, by_site):
    union = sorted((r for records in by_site for r in records), key=lambda r: r["study_id"])
    assert len(union) == len(pooled)
    assert all(_same_record(a, b) for a, b in zip(union, pooled))


def test_splits_stay_disjoint_and_match_the_plain_studies(plain, pooled):
    validation = _load("validation")
    assert set(_ids(validation)).isdisjoint(_ids(pooled))
    for a, b in zip(plain, pooled):  # same study: same findings and labels, only its look and wording change
        assert a["study_id"] == b["study_id"] and a["meta"] == b["meta"] and _same_labels(a["labels"], b["labels"])


def test_deterministic_and_independent_of_the_cache(pooled):
    hospitals._pooled_split.cache_clear()
    again = _load()
    assert all(_same_record(a, b) for a, b in zip(again, pooled))
    # a study's site does not depend on the split's size: it is drawn from (seed, index, class)
    longer = _load(num_train=500, num_validation=0)
    site_of = {r["study_id"]: r["site"] for r in longer}
    assert all(site_of[r["study_id"]] == r["site"] for r in pooled)


def test_returned_records_are_copies(pooled):
    first = _load()[0]
    first["text"] = "changed"
    first["images"].append({"image": None, "view": "X"})
    first["labels"][0] = 5.0
    fresh = _load()[0]
    assert fresh["text"] == pooled[0]["text"] and len(fresh["images"]) == 1 and fresh["labels"][0] != 5.0
    with pytest.raises(ValueError):
        fresh["image"][0, 0] = 1  # the cached arrays are read-only


def test_sizes_unequal_and_summary(pooled):
    summary = site_summary(pooled)
    assert list(summary) == hospital_names(3)
    sizes = [summary[s]["studies"] for s in summary]
    assert sum(sizes) == len(pooled) and min(sizes) < 0.8 * max(sizes) and min(sizes) >= 0.05 * len(pooled)
    assert set(summary["icu"]) == {"studies", "normal", *CLASSES[1:]}
    assert all(0.0 <= v <= 1.0 for site in summary.values() for k, v in site.items() if k != "studies")


def test_prevalence_follows_the_profiles(pooled):
    summary = site_summary(pooled)
    icu, outpatient = summary["icu"], summary["outpatient"]
    assert icu["support_devices"] > outpatient["support_devices"] + 0.1
    assert icu["pleural_effusion"] > outpatient["pleural_effusion"]
    assert outpatient["normal"] > icu["normal"] + 0.3


def test_class_frequencies_are_the_generators(plain):
    counts = Counter(study_class(r["meta"], 4) for r in plain)
    observed = np.array([counts[c] / len(plain) for c in CLASSES])
    assert class_frequencies(4).sum() == pytest.approx(1.0)
    assert np.abs(observed - class_frequencies(4)).max() < 0.06


def _mix_distance(classes, sites, num_sites) -> float:
    """Mean total-variation distance between the sites' class mixes."""
    mixes = []
    for s in range(num_sites):
        counts = Counter(c for c, site in zip(classes, sites) if site == s)
        total = max(1, sum(counts.values()))
        mixes.append(np.array([counts[c] / total for c in CLASSES]))
    return float(np.mean([0.5 * np.abs(a - b).sum() for a, b in combinations(mixes, 2)]))


def test_skew_controls_how_different_the_sites_are(plain):
    classes = [study_class(r["meta"], 3) for r in plain]
    indices = range(len(plain))
    distance = {alpha: np.mean([_mix_distance(classes, assign_sites(classes, indices, seed, 3, alpha), 3)
                                for seed in range(8)]) for alpha in (0.1, 1.0, 100.0)}
    assert distance[0.1] > distance[1.0] > distance[100.0]
    # large alpha: each class spread in the profile's mean proportions, so the direction always holds
    for seed in range(10):
        p = site_proportions(seed, 3, 100.0)  # (classes, sites): icu, outpatient, general
        assert p[CLASSES.index("support_devices"), 0] > p[CLASSES.index("support_devices"), 1]
        assert p[CLASSES.index("normal"), 1] / p[:, 1].sum() > p[CLASSES.index("normal"), 0] / p[:, 0].sum()


def test_every_draw_is_plausible():
    """Every site expects its minimum share and each class is most enriched where its profile
    has it at or above the base rate, whatever the seed, sites and skew."""
    for seed in range(10):
        for num_sites in (2, 3, 4, 6):
            tilt = np.array([[PROFILES[name].tilt[c] for name in hospital_names(num_sites)] for c in CLASSES])
            for skew in (0.05, 0.5):
                p = site_proportions(seed, num_sites, skew)  # (classes, sites)
                shares = class_frequencies(num_sites) @ p
                assert shares.min() >= hospitals.MIN_SITE_SHARE and shares.sum() == pytest.approx(1.0)
                assert (tilt[np.arange(len(CLASSES)), (p / shares).argmax(axis=1)] >= 1.0).all()


# ================================================================== appearance and reports

@pytest.fixture(scope="module")
def studies():
    """200 plain studies with lateral views, half with a prior."""
    return synthetic_records(200, seed=3, image_size=SIZE, views=2, prior_share=0.5)


def _high_frequency(image) -> float:
    x = image.astype(np.float32)
    return float(np.mean(np.abs(np.diff(x, axis=0))) + np.mean(np.abs(np.diff(x, axis=1))))


def test_site_appearance(studies):
    study = studies[0]
    styled = {site: restyle_study(study, 0, 3, SIZE, site) for site in SITE_ORDER}
    plain_pa = study["image"]
    for site, record in styled.items():
        assert record["image"] is record["images"][0]["image"] and len(record["images"]) == 2
        for entry, original in zip(record["images"], study["images"]):
            assert entry["image"].dtype == np.uint8 and entry["image"].shape == original["image"].shape
            assert np.abs(entry["image"].astype(int) - original["image"]).mean() > 1.0
    assert studies[0]["image"] is plain_pa  # the plain study is left as it was
    means = {site: np.mean([restyle_study(s, i, 3, SIZE, site)["image"].mean() for i, s in enumerate(studies[:20])])
             for site in ("icu", "trauma")}
    assert means["icu"] > means["trauma"] + 10  # a washed-out portable film against an under-exposed one
    with_prior = next(i for i, s in enumerate(studies) if s["prior"])
    prior = restyle_study(studies[with_prior], with_prior, 3, SIZE, "community")["prior"]
    assert not np.array_equal(prior["images"][0]["image"], studies[with_prior]["prior"]["images"][0]["image"])
    # an old low-resolution detector (after its noise is smoothed away) loses the film's fine detail
    smooth = hospitals.Look(0.9, 0.9, 0.03, 0.0, 2.5)
    rng = np.random.default_rng(0)
    assert _high_frequency(hospitals.restyle_image(plain_pa, smooth, rng)) < 0.8 * _high_frequency(plain_pa)


def test_report_restyling_keeps_the_labels(studies):
    changed = Counter()
    for site in SITE_ORDER:
        for i, study in enumerate(studies):
            record = restyle_study(study, i, 3, SIZE, site)
            pairs = [(study, record)] + ([(study["prior"], record["prior"])] if study["prior"] else [])
            for original, styled in pairs:
                assert _same_labels(label_report(styled["text"]), label_report(original["text"])), styled["text"]
                assert change_labels(styled["text"]) == change_labels(original["text"]), styled["text"]
                assert styled["findings"] in styled["text"] and styled["impression"] in styled["text"]
                changed[site] += (styled["findings"], styled["impression"]) != (original["findings"],
                                                                                original["impression"])
            assert _same_labels(record["labels"], study["labels"]) and record["changes"] == study["changes"]
    assert changed["general"] == 0  # the base wording
    assert all(changed[site] > 0.5 * len(studies) for site in ("icu", "outpatient", "community"))


def test_site_headers_and_section_order(studies):
    icu = restyle_study(studies[0], 0, 3, SIZE, "icu")["text"]
    outpatient = restyle_study(studies[0], 0, 3, SIZE, "outpatient")["text"]
    trauma = restyle_study(studies[0], 0, 3, SIZE, "trauma")["text"]
    assert icu.startswith(PROFILES["icu"].style.header + " FINDINGS: ")
    assert outpatient.startswith("PA AND LATERAL CHEST. FINDINGS: ")  # two views
    assert trauma.index("IMPRESSION:") < trauma.index("FINDINGS:")
    assert restyle_study(studies[0], 0, 3, SIZE, "general")["text"] == studies[0]["text"]
