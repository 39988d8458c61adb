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
import re
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
CARD_FILES = ("README.md",)  # documentation: not needed to load or resume
STEP_DIR = re.compile(r"step-\d+")  # checkpoints/step-0000300; anything else there is not a checkpoint


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


# ---------------------------------------------------------------- checking a directory against its manifest

def _manifest_problem(path: Path, required: tuple[str, ...]) -> str | None:
    """Why the files of `path` do not match its COMPLETE manifest (sizes of every file first,
    which is cheap and catches truncation, then SHA-256), or None when they all do. The model
    card (README.md) is documentation, not needed to load or resume: a difference there is
    logged, not a problem (`medvlm eval` used to rewrite it)."""
    try:
        files = json.loads((path / COMPLETE_MARKER).read_text())["files"]
        files = {name: {"size": int(entry["size"]), "sha256": str(entry["sha256"])} for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"unreadable {COMPLETE_MARKER} manifest ({error})"
    for name in required:
        if name not in files:
            return f"{name} is not part of the checkpoint"
    needed = {name: expected for name, expected in files.items() if name not in CARD_FILES}
    for name, expected in needed.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} is truncated or altered ({file.stat().st_size} bytes, expected {expected['size']})"
    for name, expected in needed.items():
        if _sha256(path / name) != expected["sha256"]:
            return f"{name} is corrupted (checksum mismatch: its SHA-256 differs from the manifest's)"
    for name in set(files) & set(CARD_FILES):
        card = path / name
        if not card.is_file() or _sha256(card) != files[name]["sha256"]:
            log.warning("%s: %s differs from the COMPLETE manifest (a model card edited after training); "
                        "not needed to load the model", path, name)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from, or None when every file it lists in its
    COMPLETE manifest is present with the recorded size and SHA-256."""
    path = Path(path)
    if not path.is_dir():
        return "no such checkpoint directory"
    if not (path / COMPLETE_MARKER).is_file():
        return "no COMPLETE marker (interrupted while writing)"
    return _manifest_problem(path, REQUIRED_FILES)


def model_dir_problem(path: Path) -> str | None:
    """Why a saved model directory (a checkpoint or `final`) cannot be loaded, judged by its COMPLETE
    manifest: the files it lists must be there with their recorded size and SHA-256. A directory
    without a manifest (saved with `save_pretrained` by hand) is not judged: None."""
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        return None
    return _manifest_problem(path, ())


def check_model_dir(path: Path, what: str = "model directory") -> Path:
    """`path`, or a UserError naming the missing, truncated or damaged file of a model directory."""
    problem = model_dir_problem(path)
    if problem:
        raise UserError(f"{what} {path}: {problem}; the directory is damaged or was copied incompletely "
                        "(copy it again, or use another checkpoint)")
    return Path(path)


# ---------------------------------------------------------------- finding a checkpoint to resume from

def list_checkpoints(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The checkpoints under `root` (folders named exactly step-<digits>), oldest first, and every
    other entry there with why it is not one (a backup copy, notes, an interrupted write)."""
    root = Path(root)
    steps, others = [], []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_dir() and STEP_DIR.fullmatch(entry.name):
            steps.append(entry)
        elif entry.name.startswith((".tmp-", ".old-")):
            others.append((entry, "left over from an interrupted checkpoint write"))
        else:
            kind = "folder" if entry.is_dir() else "file"
            others.append((entry, f"a {kind} not named step-<digits>, so not a checkpoint"))
    steps.sort(key=lambda p: int(p.name.split("-")[1]))
    return steps, others


def find_resumable_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under output_dir/checkpoints; what is passed over on the way
    (other entries, damaged checkpoints) is printed with the reason."""
    steps, others = list_checkpoints(Path(output_dir) / CHECKPOINTS)
    for path, why in others:
        print(f"[medvlm] resume: ignoring {path}: {why}")
    for path in reversed(steps):
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
