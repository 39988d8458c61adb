"""Atomic single-file and directory writes, the checkpoint manifest, and the random-generator state."""

import random

import numpy as np
import pytest
import torch

from medvlm.atomic_files import atomic_write_bytes, atomic_write_text
from medvlm.checkpointing import checkpoint_problem, restore_rng_state, save_rng_state, write_atomically


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "névé\n")
    assert path.read_text(encoding="utf-8") == "névé\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "metrics.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "cache_info.json"
    atomic_write_text(path, "old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("medvlm.atomic_files.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cache_info.json"]


def test_write_atomically_adds_a_manifest_that_checkpoint_problem_checks(tmp_path):
    def write(tmp):
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"):
            (tmp / name).write_bytes(name.encode())

    target = write_atomically(tmp_path / "step-0000001", write)
    assert checkpoint_problem(target) is None
    (target / "optimizer.pt").write_bytes(b"optimizer.px")  # same size, other bytes
    assert "checksum" in checkpoint_problem(target)
    assert checkpoint_problem(tmp_path / "nope") == "no such checkpoint directory"
    assert not list(tmp_path.glob(".tmp-*"))


def test_rng_state_round_trip(tmp_path):
    save_rng_state(tmp_path)
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(tmp_path)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
