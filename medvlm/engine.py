"""The training loop on accelerate: optimisation, periodic evaluation, atomic checkpoints,
exact resume, and logs (JSONL, TensorBoard, tqdm, a loss-curve PNG)."""

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .config import RunConfig
from .model_card import write_model_card, write_run_info
from .finetuning import base_model, exportable, trainable_state
from .processing import Collator, MedVLMProcessor, RecordDataset

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
LOSS_KEYS = ("loss", "caption_loss", "contrastive_loss")


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    batches_seen: int = 0  # micro-batches consumed; gives the epoch and the position in it
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    history: list = field(default_factory=list)  # evaluation results by step


class EpochSampler(Sampler):
    """A fresh permutation per epoch from (seed, epoch): the data order of any epoch can be
    rebuilt on resume without having saved it."""

    def __init__(self, length: int, seed: int, epoch: int = 0):
        self.length, self.seed, self.epoch = length, seed, epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- checkpoints

def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def _set_rng_state(state: dict, torch_state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch_state["torch"])
    if torch.cuda.is_available() and "cuda" in torch_state:
        torch.cuda.set_rng_state_all(torch_state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a directory via `write(tmp_dir)`, then rename it into place; a crash mid-way
    leaves only a `.tmp-*` directory, never a half-written `target`."""
    target = Path(target)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    manifest = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir()) if f.is_file()}
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": manifest}))
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)
    return target


def save_model_dir(out: Path, model, processor: MedVLMProcessor, run_config: RunConfig,
                   metrics: dict | None = None) -> None:
    model.save_pretrained(str(out))
    processor.save_pretrained(out)
    run_config.save(out / "run_config.yaml")
    write_model_card(out, run_config, metrics, split="validation subset")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from, or None when every file it lists in its
    COMPLETE manifest is present with the recorded size and SHA-256."""
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return "no COMPLETE marker (interrupted while writing)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable {COMPLETE_MARKER} manifest ({error})"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", STATE_FILE):
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
    return Path(resume)


# ---------------------------------------------------------------- the loop

class Trainer:
    def __init__(
        self,
        run_config: RunConfig,
        model,
        processor: MedVLMProcessor,
        train_records,
        validation_records=None,
        evaluate_fn: Callable | None = None,
        collate: Callable | None = None,
    ):
        """evaluate_fn(model, records) -> dict of metrics, run every `train.eval_every` steps on
        up to `train.eval_samples` validation records (e.g. generation metrics).
        collate: turns RecordDataset items into the model's keyword arguments (default: report
        tokens via `Collator`); any model whose output has a `loss` trains here."""
        self.cfg = run_config
        t = run_config.train
        self.output_dir = Path(t.output_dir)
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum,
                                       dynamo_backend="inductor" if t.compile else "no")
        if t.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} does not support it")
            model.activation_checkpointing_enable()
        self.processor = processor
        self.train_set = RecordDataset(train_records, processor.with_augmentation(run_config.data.augment),
                                       run_config.data.on_error)
        self.validation_records = validation_records
        self.evaluate_fn = evaluate_fn
        self.collate = collate or Collator(processor)
        self.optimizer = torch.optim.AdamW(model.optimizer_groups(t.weight_decay), lr=t.learning_rate,
                                           betas=(0.9, 0.98), eps=1e-6)
        self.scheduler = cosine_with_warmup(self.optimizer, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.state = TrainerState()
        self.batches_per_epoch = math.ceil(len(self.train_set) / t.batch_size)
        self.writer = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # -- data
    def _epoch_loader(self, epoch: int, skip: int):
        t = self.cfg.train
        loader = DataLoader(self.train_set, batch_size=t.batch_size,
                            sampler=EpochSampler(len(self.train_set), t.seed, epoch),
                            collate_fn=self.collate, num_workers=self.cfg.data.num_workers, drop_last=False)
        loader = self.accelerator.prepare_data_loader(loader)
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def _batches(self):
        """Micro-batches forever, starting at the saved data position."""
        while True:
            epoch, offset = divmod(self.state.batches_seen, self.batches_per_epoch)
            for batch in self._epoch_loader(epoch, offset):
                self.state.batches_seen += 1
                if batch:
                    yield batch
            if self.state.batches_seen % self.batches_per_epoch:
                self.state.batches_seen += self.batches_per_epoch - self.state.batches_seen % self.batches_per_epoch

    # -- checkpoints
    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        path = self.output_dir / CHECKPOINTS / f"step-{self.state.step:07d}"
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)

            def write(tmp: Path) -> None:
                save_model_dir(tmp, exportable(model), self.processor, self.cfg)
                if model is not base_model(model):  # LoRA: the adapters, to resume on top of the frozen base
                    save_file(trainable_state(model), str(tmp / TRAINABLE_FILE))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                torch_rng = {"torch": torch.get_rng_state()}
                if torch.cuda.is_available():
                    torch_rng["cuda"] = torch.cuda.get_rng_state_all()
                torch.save(torch_rng, tmp / "rng.pt")
                (tmp / "rng_host.json").write_text(json.dumps(_rng_state()))
                (tmp / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=1))

            write_atomically(path, write)
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()
        return path

    def _prune_checkpoints(self) -> None:
        root = self.output_dir / CHECKPOINTS
        keep = {f"step-{self.state.best_step:07d}"} if self.state.best_step is not None else set()
        steps = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for path in steps[: max(0, len(steps) - self.cfg.train.keep_last)]:
            if path.name not in keep:
                shutil.rmtree(path)
        for leftover in root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def resume_from(self, path: Path) -> None:
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(f"cannot resume from {path}: {problem}")
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(self.model)
        if model is base_model(model):
            model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        else:
            adapters = load_file(str(path / TRAINABLE_FILE))
            missing = set(trainable_state(model)) - set(adapters)
            if missing:
                raise ValueError(f"cannot resume from {path}: {TRAINABLE_FILE} lacks {sorted(missing)[:3]}...")
            model.load_state_dict(adapters, strict=False)
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        self.state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        _set_rng_state(json.loads((path / "rng_host.json").read_text()),
                       torch.load(path / "rng.pt", weights_only=True))
        print(f"[medvlm] resumed from {path} at step {self.state.step}")

    # -- logging
    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and value is not None and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def _truncate_log_after(self, step: int) -> None:
        """On resume, drop log lines the interrupted run wrote after its last checkpoint."""
        path = self.output_dir / "metrics.jsonl"
        if self.is_main and path.is_file():
            kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
            path.write_text("".join(line + "\n" for line in kept))

    # -- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.validation_records:
            return {}
        model = base_model(self.accelerator.unwrap_model(self.model))
        was_training = model.training
        model.eval()
        subset = self.validation_records[: self.cfg.train.eval_samples]
        dataset = RecordDataset(subset, self.processor, self.cfg.data.on_error)
        loader = DataLoader(dataset, batch_size=self.cfg.train.batch_size, collate_fn=self.collate)
        totals, count = {k: 0.0 for k in LOSS_KEYS}, 0
        for batch in loader:
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items() if k != "index"}
            out = model(**batch)
            n = len(batch["pixel_values"])
            for key in LOSS_KEYS:
                if getattr(out, key, None) is not None:
                    totals[key] += float(out[key]) * n
            count += n
        results = {f"val_{k}": v / max(count, 1) for k, v in totals.items() if v}
        if self.evaluate_fn is not None:
            results.update(self.evaluate_fn(model, subset))
        model.train(was_training)
        return results

    # -- main loop
    def train(self) -> Path:
        t = self.cfg.train
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            write_run_info(self.output_dir, self.cfg)
        resume_path = resolve_resume(self.cfg)
        if resume_path is not None:
            self.resume_from(resume_path)
            self._truncate_log_after(self.state.step)
        if self.is_main and t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        model = self.model
        model.train()
        progress = tqdm(total=t.max_steps, initial=self.state.step, desc="train", disable=not self.is_main,
                        dynamic_ncols=True)
        batches = self._batches()
        window = {k: [] for k in LOSS_KEYS}
        window_start, samples = time.perf_counter(), 0
        while self.state.step < t.max_steps:
            step_finite = True
            for _ in range(t.grad_accum):
                batch = next(batches)
                batch.pop("index")
                with self.accelerator.accumulate(model):
                    out = model(**batch)
                    finite = self.accelerator.gather(torch.isfinite(out.loss.detach()).reshape(1)).all()
                    if not finite:
                        step_finite = False
                        self.optimizer.zero_grad(set_to_none=True)
                        break
                    self.accelerator.backward(out.loss)
                    if self.accelerator.sync_gradients and t.grad_clip > 0:
                        self.accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                samples += len(batch["pixel_values"]) * self.accelerator.num_processes
                for key in LOSS_KEYS:
                    if getattr(out, key, None) is not None:
                        window[key].append(float(out[key].detach()))
            if not step_finite:
                self.state.nonfinite_in_a_row += 1
                self.state.nonfinite_total += 1
                print(f"[medvlm] step {self.state.step}: non-finite loss, step skipped "
                      f"({self.state.nonfinite_in_a_row} in a row)")
                if self.state.nonfinite_in_a_row >= t.max_nonfinite_steps:
                    raise RuntimeError(
                        f"training stopped: {self.state.nonfinite_in_a_row} steps in a row had a non-finite loss "
                        f"(at step {self.state.step}); lower train.learning_rate, check the data, or resume from "
                        f"the last checkpoint in {self.output_dir / CHECKPOINTS}")
                continue
            self.state.nonfinite_in_a_row = 0
            self.scheduler.step()
            self.state.step += 1
            progress.update(1)
            step = self.state.step
            if step % t.log_every == 0 or step == t.max_steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "lr": self.scheduler.get_last_lr()[0],
                          "samples_per_s": samples / max(elapsed, 1e-9),
                          "nonfinite_total": self.state.nonfinite_total}
                record.update({k: sum(v) / len(v) for k, v in window.items() if v})
                inner = getattr(base_model(self.accelerator.unwrap_model(model)), "model", None)
                if hasattr(inner, "clamped_logit_scale"):
                    record["logit_scale"] = float(inner.clamped_logit_scale())
                progress.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}")
                self._log(record)
                window = {k: [] for k in LOSS_KEYS}
                window_start, samples = time.perf_counter(), 0
            if t.eval_every and (step % t.eval_every == 0 or step == t.max_steps):
                self._run_evaluation(step)
            if t.save_every and step % t.save_every == 0 and step < t.max_steps:
                self.save_checkpoint()
        progress.close()
        return self._finish()

    def _run_evaluation(self, step: int) -> None:
        results = self.evaluate()
        if not results:
            return
        self._log({"step": step, **results})
        self.state.history.append({"step": step, **results})
        metric = results.get("val_loss")
        if metric is not None and (self.state.best_metric is None or metric < self.state.best_metric):
            self.state.best_metric, self.state.best_step = metric, step
        if self.is_main:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in results.items() if isinstance(v, float))
            tqdm.write(f"[medvlm] step {step}: {shown}")

    def _finish(self) -> Path:
        self.accelerator.wait_for_everyone()
        final = self.output_dir / "final"
        if self.is_main:
            model = exportable(self.accelerator.unwrap_model(self.model))
            latest = self.state.history[-1] if self.state.history else None
            latest = {k.removeprefix("val_"): v for k, v in latest.items()} if latest else None
            write_atomically(final, lambda tmp: save_model_dir(tmp, model, self.processor, self.cfg, latest))
            (self.output_dir / "trainer_state.json").write_text(json.dumps(asdict(self.state), indent=1))
            plot_loss_curve(self.output_dir / "metrics.jsonl", self.output_dir / "loss_curve.png")
        if self.writer is not None:
            self.writer.close()
        self.accelerator.wait_for_everyone()
        return final


def plot_loss_curve(metrics_file: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "caption_loss", "contrastive_loss", "val_loss"):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=key, marker="o" if key == "val_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
