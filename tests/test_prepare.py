"""The Arrow cache: round trip, metadata checks, resumption, workers, DataLoader use."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from medvlm.data.images import load_image, resize_keep_aspect
from medvlm.data.prepare import CACHE_INFO, load_cache, prepare_cache
from medvlm.data.records import DataError, make_record


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
