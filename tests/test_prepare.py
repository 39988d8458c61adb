"""The Arrow cache: round trip, metadata checks, resumption, workers, DataLoader use."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvlm.data.images import load_image, resize_keep_aspect
from medvlm.data.prepare import CACHE_INFO, load_cache, prepare_cache
from medvlm.data.records import DataError, make_prior, make_record


def make_records(root, n=7, size=(40, 30)):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(path)
        labels = [math.nan] * 14
        labels[i % 14] = 1.0
        labels[(i + 1) % 14] = -1.0
        records.append(make_record(image=str(path), text=f"report {i}", findings=f"F{i}", impression="",
                                   study_id=f"s{i}", subject_id=f"p{i // 2}", view="PA", split="train",
                                   labels=labels))
    return records


def test_round_trip_pixels_and_fields(tmp_path):
    records = make_records(tmp_path / "img")
    summary = prepare_cache(records, tmp_path / "cache", 16, progress=False)
    assert summary.num_records == 7 and summary.built_shards == 1
    cache = load_cache(tmp_path / "cache", image_size=16, resize_mode="pad")
    assert len(cache) == 7
    for record, cached in zip(records, cache):
        assert cached["image"].dtype == np.uint8 and cached["image"].shape == (16, 16)
        np.testing.assert_array_equal(cached["image"], resize_keep_aspect(load_image(record["image"]), 16, "pad"))
        assert cached["image_path"] == record["image"]
        for key in ("text", "findings", "impression", "study_id", "subject_id", "view", "split"):
            assert cached[key] == record[key]
        assert isinstance(cached["labels"], list)
        np.testing.assert_array_equal(np.array(cached["labels"]), np.array(record["labels"], np.float32))
    assert cache[-1]["study_id"] == "s6"
    with pytest.raises(IndexError):
        cache[7]


def test_vqa_fields_arrays_and_missing_labels(tmp_path):
    records = [make_record(image=np.full((20, 10), 0.5, np.float32), text="yes", study_id="a", split="test",
                           question="Is it?", answer="yes", answer_type="closed", qid="1", score=0.25)]
    prepare_cache(records, tmp_path / "c", 8, resize_mode="crop", progress=False)
    cached = load_cache(tmp_path / "c")[0]
    assert cached["labels"] is None and cached["image_path"] == ""
    assert (cached["question"], cached["answer"], cached["answer_type"], cached["qid"]) == ("Is it?", "yes", "closed", "1")
    assert cached["score"] == 0.25
    assert (cached["image"] == 128).all()


def test_mismatch_is_refused_clearly(tmp_path):
    records = make_records(tmp_path / "img", n=2)
    prepare_cache(records, tmp_path / "c", 16, progress=False)
    with pytest.raises(DataError, match=r"holds image_size=16, resize_mode='pad' but image_size=32"):
        load_cache(tmp_path / "c", image_size=32)
    with pytest.raises(DataError, match=r"resize_mode='crop' was asked"):
        load_cache(tmp_path / "c", resize_mode="crop")
    with pytest.raises(DataError, match="built with image_size=16.*overwrite=True"):
        prepare_cache(records, tmp_path / "c", 32, progress=False)
    again = prepare_cache(records, tmp_path / "c", 16, progress=False)  # same job: reused as is
    assert again.built_shards == 0
    prepare_cache(records, tmp_path / "c", 32, overwrite=True, progress=False)
    assert load_cache(tmp_path / "c", image_size=32)[0]["image"].shape == (32, 32)
    with pytest.raises(DataError, match="not a prepared cache"):
        load_cache(tmp_path / "nothing")


def test_interrupted_build_resumes_from_finished_shards(tmp_path):
    records = make_records(tmp_path / "img", n=7)
    bad = records[5]["image"]
    good_bytes = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(good_bytes[:60])  # truncated: shard 2 (records 4-5) fails under on_error="raise"
    with pytest.raises(DataError, match="5.png"):
        prepare_cache(records, tmp_path / "c", 16, shard_size=2, progress=False)
    assert not (tmp_path / "c").exists()  # nothing half-written under the final name
    with pytest.raises(DataError, match="unfinished build"):
        load_cache(tmp_path / "c")
    with open(bad, "wb") as f:
        f.write(good_bytes)
    summary = prepare_cache(records, tmp_path / "c", 16, shard_size=2, progress=False)
    assert (summary.reused_shards, summary.built_shards) == (2, 2)
    assert len(load_cache(tmp_path / "c")) == 7
    assert not (tmp_path / ".c.partial").exists()


def test_skip_counts_bad_images(tmp_path):
    records = make_records(tmp_path / "img", n=4)
    open(records[1]["image"], "wb").close()  # zero bytes
    (tmp_path / "img" / "3.png").unlink()  # missing
    summary = prepare_cache(records, tmp_path / "c", 16, on_error="skip", progress=False)
    assert summary.num_records == 2 and summary.skipped == {"empty_file": 1, "missing_file": 1}
    cache = load_cache(tmp_path / "c")
    assert [r["study_id"] for r in cache] == ["s0", "s2"]
    assert cache.info["skipped"] == {"empty_file": 1, "missing_file": 1}


def test_workers_give_the_same_cache(tmp_path):
    records = make_records(tmp_path / "img", n=9)
    prepare_cache(records, tmp_path / "a", 16, num_workers=0, shard_size=4, progress=False)
    prepare_cache(records, tmp_path / "b", 16, num_workers=2, shard_size=4, progress=False)
    a, b = load_cache(tmp_path / "a"), load_cache(tmp_path / "b")
    assert len(a) == len(b) == 9
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["study_id"] == y["study_id"]
    assert (tmp_path / "a" / CACHE_INFO).is_file()


def test_cache_through_dataloader_workers(tmp_path):
    from medvlm.data.images import ImageTransform

    records = make_records(tmp_path / "img", n=6)
    prepare_cache(records, tmp_path / "c", 16, shard_size=4, progress=False)
    cache = load_cache(tmp_path / "c")
    transform = ImageTransform(16)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(cache)

        def __getitem__(self, i):
            return transform(cache[i]["image"]), cache[i]["study_id"]

    loader = torch.utils.data.DataLoader(DS(), batch_size=4, num_workers=2)
    batches = list(loader)
    assert batches[0][0].shape == (4, 1, 16, 16)
    assert [s for _, ids in batches for s in ids] == [f"s{i}" for i in range(6)]


def study_record(root, name, *, prior=True):
    """A two-view study (PA 40x30, LATERAL 30x40) with a two-view prior study."""
    rng = np.random.default_rng(len(name))
    paths = {}
    for part, size in (("pa", (30, 40)), ("lat", (40, 30)), ("prior_ap", (20, 20)), ("prior_lat", (24, 16))):
        paths[part] = root / f"{name}_{part}.png"
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(paths[part])
    earlier = make_prior(images=[{"image": str(paths["prior_ap"]), "view": "AP"},
                                 {"image": str(paths["prior_lat"]), "view": "LATERAL"}],
                         text="Old report.", study_id=f"{name}-0", findings="Old report.", impression="Old.")
    views = [{"image": str(paths["lat"]), "view": "LATERAL"}, {"image": str(paths["pa"]), "view": "PA"}]
    return make_record(images=views,
                       prior=earlier if prior else None, text=f"Report {name}.", study_id=name, split="train")


def test_studies_and_priors_round_trip(tmp_path):
    (tmp_path / "img").mkdir()
    records = [study_record(tmp_path / "img", "a"), study_record(tmp_path / "img", "bb", prior=False)]
    summary = prepare_cache(records, tmp_path / "c", 16, progress=False)
    assert summary.num_records == 2
    cache = load_cache(tmp_path / "c")
    for record, cached in zip(records, cache):
        assert [i["view"] for i in cached["images"]] == [i["view"] for i in record["images"]] == ["PA", "LATERAL"]
        for source, image in zip(record["images"], cached["images"]):
            np.testing.assert_array_equal(image["image"], resize_keep_aspect(load_image(source["image"]), 16, "pad"))
        np.testing.assert_array_equal(cached["image"], cached["images"][0]["image"])
        assert cached["view"] == "PA" and cached["image_paths"] == [i["image"] for i in record["images"]]
    prior = cache[0]["prior"]
    assert {k: prior[k] for k in ("study_id", "text", "findings", "impression")} == {
        "study_id": "a-0", "text": "Old report.", "findings": "Old report.", "impression": "Old."}
    assert [i["view"] for i in prior["images"]] == ["AP", "LATERAL"]
    for source, image in zip(records[0]["prior"]["images"], prior["images"]):
        np.testing.assert_array_equal(image["image"], resize_keep_aspect(load_image(source["image"]), 16, "pad"))
    assert cache[1]["prior"] is None
    assert prepare_cache(records, tmp_path / "c", 16, progress=False).built_shards == 0  # same studies: reused
    changed = [records[0], {**records[1], "prior": records[0]["prior"]}]
    with pytest.raises(DataError, match="from other records"):
        prepare_cache(changed, tmp_path / "c", 16, progress=False)


def test_a_bad_image_leaves_its_study_or_prior(tmp_path):
    (tmp_path / "img").mkdir()
    records = [study_record(tmp_path / "img", name) for name in ("a", "b", "c")]
    (tmp_path / "img" / "a_lat.png").write_bytes(b"")  # a's lateral view
    (tmp_path / "img" / "b_prior_ap.png").unlink()  # one image of b's prior
    for part in ("pa", "lat"):  # every image of c
        (tmp_path / "img" / f"c_{part}.png").unlink()
    with pytest.raises(DataError, match="a_lat.png"):
        prepare_cache(records, tmp_path / "c", 16, progress=False)
    summary = prepare_cache(records, tmp_path / "c", 16, on_error="skip", progress=False)
    assert summary.num_records == 2 and summary.skipped == {"empty_file": 1, "missing_file": 3}
    assert {Path(f["item"]).name for f in summary.failed} == {"a_lat.png", "b_prior_ap.png", "c_pa.png",
                                                             "c_lat.png"}
    a, b = load_cache(tmp_path / "c")
    assert [i["view"] for i in a["images"]] == ["PA"] and len(a["prior"]["images"]) == 2
    assert len(b["images"]) == 2 and [i["view"] for i in b["prior"]["images"]] == ["LATERAL"]


def test_loaded_mimic_studies_cache_every_image(tmp_path):
    from test_study_loaders import write_mimic

    from medvlm.data.mimic_cxr import load_mimic_cxr

    records = load_mimic_cxr(write_mimic(tmp_path / "mimic"), views="all", studies="all_views", priors=True,
                             split="test")
    prepare_cache(records, tmp_path / "c", 8, progress=False)
    cache = load_cache(tmp_path / "c")
    assert [r["study_id"] for r in cache] == ["50000012", "50000013"]
    assert [len(r["images"]) for r in cache] == [2, 2] and cache[0]["prior"] is None
    assert cache[1]["prior"]["study_id"] == "50000012" and len(cache[1]["prior"]["images"]) == 2
    assert cache[1]["prior"]["image_paths"] == [i["image"] for i in records[1]["prior"]["images"]]
