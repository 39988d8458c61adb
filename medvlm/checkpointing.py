"""Training checkpoints: their format (directories written atomically, with a SHA-256 manifest
and the RNG state) and resuming from them.

A training checkpoint is a directory `checkpoints/step-NNNNNNN` holding a saved model directory
(`save_model_dir`), `trainable.safetensors` (LoRA runs only: the adapters), `optimizer.pt`,
`scheduler.pt`, `rng.pt` + `rng_host.json` (torch / Python + NumPy generators) and
`trainer_state.json`, and last a `COMPLETE` manifest with every file's size and SHA-256. It is
written into a temporary directory and renamed into place, so a crash leaves either the old state
or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import UserError
from .finetuning import base_model, exportable, trainable_state
from .model_card import write_model_card

if TYPE_CHECKING:
    from .config import RunConfig
    from .processing import MedVLMProcessor

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"  # torch (and CUDA) generators
RNG_HOST_FILE = "rng_host.json"  # Python and NumPy generators
REQUIRED_FILES = ("model.safetensors", OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, STATE_FILE)


# ---------------------------------------------------------------- atomic writes

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(directory: Path) -> dict:
    """{file name: {"size", "sha256"}} for the plain files of `directory`."""
    return {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(directory.iterdir())
            if f.is_file()}


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a directory via `write(tmp_dir)`, add the COMPLETE manifest, then rename it into
    place; a crash mid-way leaves only a `.tmp-*` directory, never a half-written `target`."""
    target = Path(target)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    manifest = _manifest(tmp)
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": manifest}))
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)
    return target


# ---------------------------------------------------------------- random generators

def save_rng_state(directory: Path) -> None:
    """The torch (and CUDA) generators to rng.pt, Python's and NumPy's to rng_host.json."""
    torch_rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        torch_rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(torch_rng, directory / RNG_FILE)
    numpy_state = np.random.get_state()
    host = {"python": random.getstate(), "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]}
    (directory / RNG_HOST_FILE).write_text(json.dumps(host))


def restore_rng_state(directory: Path) -> None:
    """Set every generator back to what `save_rng_state` wrote."""
    host = json.loads((directory / RNG_HOST_FILE).read_text())
    torch_state = torch.load(directory / RNG_FILE, weights_only=True)
    python = host["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = host["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch_state["torch"])
    if torch.cuda.is_available() and "cuda" in torch_state:
        torch.cuda.set_rng_state_all(torch_state["cuda"])


# ---------------------------------------------------------------- model directories and checkpoints

def save_model_dir(out: Path, model, processor: MedVLMProcessor, run_config: RunConfig,
                   metrics: dict | None = None) -> None:
    """What `medvlm eval` and `from_pretrained` read: weights + config, processor, run config, model card."""
    model.save_pretrained(str(out))
    processor.save_pretrained(out)
    run_config.save(out / "run_config.yaml")
    write_model_card(out, run_config, metrics, split="validation subset")


def write_training_checkpoint(out: Path, model, processor: MedVLMProcessor, run_config: RunConfig,
                              optimizer, scheduler, trainer_state: dict) -> None:
    """The files of a training checkpoint into the (temporary) directory `out`; `model` is the
    unwrapped training model (a LoRA model saves merged weights plus its adapters)."""
    save_model_dir(out, exportable(model), processor, run_config)
    if model is not base_model(model):  # LoRA: the adapters, to resume on top of the frozen base
        save_file(trainable_state(model), str(out / TRAINABLE_FILE))
    torch.save(optimizer.state_dict(), out / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), out / SCHEDULER_FILE)
    save_rng_state(out)
    (out / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))


def load_training_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Load a checkpoint written by `write_training_checkpoint` into the unwrapped `model`,
    `optimizer` and `scheduler`, restore the random generators, and return the trainer state
    dict. A damaged checkpoint is a UserError saying what is wrong with it."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem:
        raise UserError(f"cannot resume from {path}: {problem}")
    if model is base_model(model):
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    else:
        adapters = load_file(str(path / TRAINABLE_FILE))
        missing = set(trainable_state(model)) - set(adapters)
        if missing:
            raise UserError(f"cannot resume from {path}: {TRAINABLE_FILE} lacks {sorted(missing)[:3]}... "
                            "(was it written with other train.lora settings?)")
        model.load_state_dict(adapters, strict=False)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, weights_only=True))
    scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
    trainer_state = json.loads((path / STATE_FILE).read_text())
    restore_rng_state(path)
    return trainer_state


# ---------------------------------------------------------------- finding a checkpoint to resume from

def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from, or None when every file it lists in its
    COMPLETE manifest is present with the recorded size and SHA-256."""
    path = Path(path)
    if not path.is_dir():
        return "no such checkpoint directory"
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return "no COMPLETE marker (interrupted while writing)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable {COMPLETE_MARKER} manifest ({error})"
    for name in REQUIRED_FILES:
        if name not in files:
            return f"{name} is not part of the checkpoint"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} is truncated or altered ({file.stat().st_size} bytes, expected {expected['size']})"
        if _sha256(file) != expected["sha256"]:
            return f"{name} is corrupted (checksum mismatch)"
    return None


def find_resumable_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under output_dir/checkpoints; damaged ones are reported and skipped."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    candidates = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
        print(f"[medvlm] skipping checkpoint {path}: {problem}")
    return None


def resolve_resume(cfg: RunConfig) -> Path | None:
    """`train.resume`: None, a checkpoint directory, or "auto" (newest complete one, else start fresh)."""
    resume = cfg.train.resume
    if resume is None:
        return None
    if resume == "auto":
        found = find_resumable_checkpoint(Path(cfg.train.output_dir))
        if found is None:
            print(f"[medvlm] resume auto: no complete checkpoint in {cfg.train.output_dir}; starting fresh")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"train.resume: {path} is not a checkpoint directory; give one of "
                        f"{cfg.train.output_dir}/{CHECKPOINTS}/step-* or 'auto'")
    return path
