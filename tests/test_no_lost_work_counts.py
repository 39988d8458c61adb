"""Counts that tell the truth: every record left out (while loading, decoding or training) is
counted by reason, and the totals reach the log, cache_info.json / run_info.json and the end of
the command; `prepare` goes past bad images, names each, and exits 1 at the end."""

import csv
import json
from pathlib import Path

import pytest
import torch

from medvlm import cli
from medvlm.config import load_config
from medvlm.data.images import ImageTransform
from medvlm.data.prepare import CACHE_INFO, load_cache, prepare_cache
from medvlm.data.records import RecordList
from medvlm.data.synthetic import save_png_tree, synthetic_records
from medvlm.engine import Trainer
from medvlm.errors import UserError
from medvlm.processing import MedVLMProcessor, RecordDataset
from tiny import ROOT, TINY


def png_records(folder: Path, n: int, missing=(), empty=(), truncated=()) -> list[dict]:
    records = save_png_tree(synthetic_records(n, seed=2, image_size=32), folder)
    for i in missing:
        Path(records[i]["image"]).unlink()
    for i in empty:
        Path(records[i]["image"]).write_bytes(b"")
    for i in truncated:
        path = Path(records[i]["image"])
        path.write_bytes(path.read_bytes()[:60])
    return records


@pytest.fixture
def table(tmp_path):
    """A CSV of 15 train studies: one image missing, one truncated."""
    records = png_records(tmp_path / "images", 15, missing=[3], truncated=[5])
    with open(tmp_path / "images" / "reports.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "split"])
        writer.writeheader()
        writer.writerows({"image": Path(r["image"]).name, "text": r["text"], "split": "train"} for r in records)
    return tmp_path / "images" / "reports.csv", records


def prepare_argv(csv_path: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--out", str(out), "--workers", "0", "data.dataset=csv", f"data.root={csv_path}",
            "data.options={split_column: split}", "data.image_size=16", *extra]


def test_prepare_goes_past_bad_images_counts_them_and_exits_1(table, tmp_path, capsys):
    csv_path, records = table
    assert cli.main(prepare_argv(csv_path, tmp_path / "cache")) == 1
    out, err = capsys.readouterr()
    assert "train: 13 cached, 2 skipped (corrupt_image: 1, missing_file: 1)" in out
    assert f"skipped {records[5]['image']}: image is truncated or corrupt" in err  # named, with its reason
    assert "1 record(s) left out while loading" in err
    assert err.strip().splitlines()[-1] == "medvlm prepare: 13 cached, 2 skipped (corrupt_image: 1, missing_file: 1)"
    info = json.loads((tmp_path / "cache" / "train" / CACHE_INFO).read_text())
    assert info["num_records"] == 13 and info["skipped_total"] == 2
    assert info["skipped"] == {"corrupt_image": 1, "missing_file": 1}
    assert info["skipped_while_loading"] == {"missing_file": 1}
    assert [f["item"] for f in info["failed"]] == [records[5]["image"]]
    assert len(load_cache(tmp_path / "cache" / "train")) == 13  # the good ones were written


def test_prepare_strict_stops_at_the_first_bad_item(table, tmp_path, capsys):
    csv_path, records = table
    assert cli.main(prepare_argv(csv_path, tmp_path / "cache", "--strict")) == 2
    err = capsys.readouterr().err
    assert "medvlm prepare: error:" in err and Path(records[3]["image"]).name in err and "not found" in err
    assert not (tmp_path / "cache" / "train").exists()


def test_prepare_cache_counts_what_the_loader_left_out_and_keeps_names_on_reuse(tmp_path):
    records = png_records(tmp_path / "images", 6, empty=[1], truncated=[4])
    loaded = RecordList(records, skipped={"missing_file": 2})  # as a loader under on_error=skip returns them
    first = prepare_cache(loaded, tmp_path / "c", 16, on_error="skip", shard_size=4, progress=False)
    assert first.line() == "4 cached, 4 skipped (corrupt_image: 1, empty_file: 1, missing_file: 2)"
    assert sorted(f["reason"] for f in first.failed) == ["corrupt_image", "empty_file"]
    again = prepare_cache(loaded, tmp_path / "c", 16, on_error="skip", shard_size=4, progress=False)
    assert again.built_shards == 0 and again.line() == first.line() and again.failed == first.failed


def tiny_trainer(out: Path, records, *overrides: str) -> Trainer:
    from medvlm.runs import build_model, build_processor

    cfg = load_config(ROOT / "configs/demo.yaml", [*TINY, f"train.output_dir={out}", "train.max_steps=4",
                                                   "train.eval_every=0", "train.save_every=0", "data.on_error=skip",
                                                   "train.tensorboard=false", *overrides])
    processor = build_processor(cfg, synthetic_records(16, seed=1, image_size=32))
    return Trainer(cfg, build_model(cfg, processor), processor, records)


def test_training_counts_each_skipped_image_once_in_the_log_run_info_and_the_end(tmp_path, capsys):
    records = png_records(tmp_path / "images", 16, missing=[2], empty=[9])
    loaded = RecordList(records, skipped={"corrupt_image": 1})
    trainer = tiny_trainer(tmp_path / "run", loaded)
    trainer.train()  # 4 steps of 8 over 16 records: two epochs, each bad image met twice
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["skipped_items"] == 2
    assert all("skipped_items" in row for row in rows)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["skipped"] == {"loading": {"total": 1, "corrupt_image": 1},
                               "training": {"total": 2, "empty_file": 1, "missing_file": 1}}
    assert info["steps"] == 4 and "finished" in info and "config" in info
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["skipped_items"] == {"2": "missing_file", "9": "empty_file"}
    assert ("train: 1 record(s) skipped while loading (corrupt_image: 1), 2 image(s) skipped while training "
            "(empty_file: 1, missing_file: 1)") in capsys.readouterr().out
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_the_counts_survive_a_resume(tmp_path):
    records = png_records(tmp_path / "images", 16, missing=[2, 9])
    tiny_trainer(tmp_path / "run", records, "train.save_every=2").train()
    again = tiny_trainer(tmp_path / "run", records, "train.resume=auto")
    again.resume_from(tmp_path / "run" / "checkpoints" / "step-0000002")
    assert again.train_set.skipped_items() == {"2": "missing_file", "9": "missing_file"}


def test_dataloader_workers_count_into_the_same_table(tmp_path):
    records = png_records(tmp_path / "images", 6, missing=[0], empty=[3])
    dataset = RecordDataset(records, MedVLMProcessor(None, ImageTransform(16)), on_error="skip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=list)
    items = [item for batch in loader for item in batch]
    assert sum(item is None for item in items) == 2
    assert dataset.skipped == 2 and dataset.skipped_items() == {"0": "missing_file", "3": "empty_file"}


def test_training_on_nothing_is_an_error_not_a_silent_run(tmp_path):
    nothing = r"no training records.*2 record\(s\) skipped while loading \(missing_file: 2\)"
    with pytest.raises(UserError, match=nothing):
        tiny_trainer(tmp_path / "a", RecordList([], skipped={"missing_file": 2}))
    all_bad = png_records(tmp_path / "images", 4, empty=[0, 1, 2, 3])
    with pytest.raises(UserError, match=r"every training image failed to load in epoch 0 \(4 image\(s\) skipped "
                                        r"\(empty_file: 4\)"):
        tiny_trainer(tmp_path / "b", all_bad).train()
    assert not (tmp_path / "b" / "final").exists()
