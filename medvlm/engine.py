"""The training loop on accelerate: optimisation, periodic evaluation, checkpoints and exact
resume (their format and atomic writing: `medvlm.checkpointing`), and logs (JSONL, TensorBoard,
tqdm, a loss-curve PNG)."""

import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpointing import (
    CHECKPOINTS, STATE_FILE, checkpoint_problem, list_checkpoints, load_training_checkpoint, resolve_resume,
    save_model_dir, write_atomically, write_training_checkpoint,
)
from .atomic_files import atomic_write_text
from .config import RunConfig
from .errors import UserError
from .finetuning import base_model, exportable, tower_learning_rate_groups
from .model_card import update_run_info, write_run_info
from .processing import Collator, MedVLMProcessor, RecordDataset

log = logging.getLogger(__name__)
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
    skipped_items: dict = field(default_factory=dict)  # {record index: reason} of training images skipped


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


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The share of the peak learning rate at `step`: linear warmup, then a cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_ratio))


class _LogWindow:
    """The micro-batches since the last log line: their losses, samples and time, and the
    contrastive temperature (`logit_scale`) of the last one's forward pass."""

    def __init__(self):
        self.losses = {k: [] for k in LOSS_KEYS}
        self.start, self.samples = time.perf_counter(), 0
        self.logit_scale = None

    def add(self, out, samples: int) -> None:
        self.samples += samples
        for key in LOSS_KEYS:
            if getattr(out, key, None) is not None:
                self.losses[key].append(float(out[key].detach()))
        if getattr(out, "logit_scale", None) is not None:  # CheXNet outputs have none
            self.logit_scale = float(out.logit_scale.detach())

    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def mean_losses(self) -> dict:
        return {k: sum(v) / len(v) for k, v in self.losses.items() if v}


@torch.no_grad()
def mean_losses(model, loader, device) -> dict:
    """The losses of `model` (LOSS_KEYS it reports) averaged over every sample of `loader`."""
    totals, count = {k: 0.0 for k in LOSS_KEYS}, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        n = len(batch["pixel_values"])
        for key in LOSS_KEYS:
            if getattr(out, key, None) is not None:
                totals[key] += float(out[key]) * n
        count += n
    return {k: v / max(count, 1) for k, v in totals.items() if v}


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
        resume_path: Path | None | str = "from config",
        extra_loss: Callable | None = None,
        show_progress: bool = True,
    ):
        """evaluate_fn(model, records) -> dict of metrics, run every `train.eval_every` steps on
        up to `train.eval_samples` validation records (e.g. generation metrics).
        collate: turns RecordDataset items into the model's keyword arguments (default: report
        tokens via `Collator`); any model whose output has a `loss` trains here.
        resume_path: the checkpoint `resolve_resume` already chose (None: start fresh), so a
        caller that needed it earlier (for its tokenizer) does not search and report twice;
        by default `train.resume` is resolved here.
        extra_loss(model) -> scalar tensor added to every micro-batch's loss before backward
        (federated FedProx's proximal term: medvlm.federated.local_training).
        show_progress: the tqdm bar (a federated site's short rounds go without)."""
        self.cfg = run_config
        self.resume_path = resume_path
        t = run_config.train
        self.output_dir = Path(t.output_dir)
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum,
                                       dynamo_backend="inductor" if t.compile else "no")
        if t.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise UserError(f"train.gradient_checkpointing=true: {type(model).__name__} does not support it; "
                                "set it to false")
            model.activation_checkpointing_enable()
        self.processor = processor
        # a classifier reads one image per record (the frontal first); a VLM reads whole studies
        self.studies = False if run_config.model.architecture == "chexnet" else None
        self.train_set = RecordDataset(train_records, processor.with_augmentation(run_config.data.augment),
                                       run_config.data.on_error, studies=self.studies)
        self.loading_skips = skipped_while_loading(train_records)
        if len(self.train_set) == 0:
            raise UserError("no training records: the train split is empty" + (
                f" ({_counts(self.loading_skips, 'record(s) skipped while loading')}; see the warnings above)"
                if self.loading_skips else "") + "; check data.root, data.options and data.on_error")
        self.validation_records = validation_records
        _check_early_stopping(t, validation_records)
        self.evaluate_fn = evaluate_fn
        self.collate = collate or Collator(processor)
        self.extra_loss, self.show_progress = extra_loss, show_progress
        groups = tower_learning_rate_groups(model, model.optimizer_groups(t.weight_decay), t.tower_learning_rates)
        self.optimizer = torch.optim.AdamW(groups, lr=t.learning_rate,
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
        """Micro-batches forever, starting at the saved data position. A whole epoch in which
        every image was skipped (data.on_error=skip) is an error, not an endless loop."""
        while True:
            epoch, offset = divmod(self.state.batches_seen, self.batches_per_epoch)
            yielded = False
            for batch in self._epoch_loader(epoch, offset):
                self.state.batches_seen += 1
                if batch:
                    yielded = True
                    yield batch
            if not yielded and offset == 0:
                raise UserError(f"every training image failed to load in epoch {epoch} "
                                f"({_counts(self.skip_counts(), 'image(s) skipped')}; see the warnings above); "
                                "check the image files under data.root")
            if self.state.batches_seen % self.batches_per_epoch:
                self.state.batches_seen += self.batches_per_epoch - self.state.batches_seen % self.batches_per_epoch

    # -- checkpoints
    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        path = self.output_dir / CHECKPOINTS / f"step-{self.state.step:07d}"
        self._sync_skipped_items()
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            write_atomically(path, lambda tmp: write_training_checkpoint(
                tmp, model, self.processor, self.cfg, self.optimizer, self.scheduler, asdict(self.state)))
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()
        return path

    def _prune_checkpoints(self) -> None:
        """Keep the last `train.keep_last` checkpoints and the best; nothing but step-<digits>
        folders (and our own interrupted writes) is ever removed."""
        root = self.output_dir / CHECKPOINTS
        keep = {f"step-{self.state.best_step:07d}"} if self.state.best_step is not None else set()
        steps, _ = list_checkpoints(root)
        for path in steps[: max(0, len(steps) - self.cfg.train.keep_last)]:
            if path.name not in keep:
                shutil.rmtree(path)
        for leftover in root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def resume_from(self, path: Path) -> None:
        model = self.accelerator.unwrap_model(self.model)
        self.state = TrainerState(**load_training_checkpoint(path, model, self.optimizer, self.scheduler))
        self.train_set.restore_skipped(self.state.skipped_items)
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

    def _read_log_for_resume(self) -> list[dict]:
        """The rows of metrics.jsonl before resuming. A torn last line (a run killed while writing
        it) is dropped, and said so; an unreadable line before the last is not what a kill leaves,
        so it is a UserError naming its line number rather than something to rewrite away."""
        path = self.output_dir / "metrics.jsonl"
        rows, bad, last = read_log(path)
        for number, why in bad:
            if number != last:
                raise UserError(f"{path}, line {number}: not a JSON record ({why}); only the last line can be "
                                f"torn by an interrupted run. Fix or delete line {number}, then resume again")
            if self.is_main:
                print(f"[medvlm] resume: dropping the torn last line {number} of {path} (the run was interrupted "
                      "while writing it)")
        return rows

    def _rewrite_log(self, rows: list[dict], step: int) -> None:
        """On resume, keep the log lines up to the checkpoint's step; later ones are redone."""
        path = self.output_dir / "metrics.jsonl"
        kept = [row for row in rows if row.get("step", 0) <= step]
        if len(kept) < len(rows) and self.is_main:
            print(f"[medvlm] resume: dropping {len(rows) - len(kept)} log line(s) written after step {step}")
        if self.is_main and path.is_file():
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))

    # -- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.validation_records:
            return {}
        model = base_model(self.accelerator.unwrap_model(self.model))
        was_training = model.training
        model.eval()
        subset = self.validation_records[: self.cfg.train.eval_samples]
        dataset = RecordDataset(subset, self.processor, self.cfg.data.on_error, studies=self.train_set.studies)
        loader = DataLoader(dataset, batch_size=self.cfg.train.batch_size, collate_fn=self.collate)
        results = {f"val_{k}": v for k, v in mean_losses(model, loader, self.accelerator.device).items()}
        if self.evaluate_fn is not None:
            results.update(self.evaluate_fn(model, subset))
        model.train(was_training)
        return results

    # -- main loop
    def train(self) -> Path:
        """Optimizer steps until `train.max_steps` (or until `train.early_stopping_patience`
        evaluations have not lowered the validation loss), logging, evaluating and saving as
        configured; returns the final model directory."""
        self._start()
        while self.state.step < self.cfg.train.max_steps and not self._patience_spent():
            if not self._optimizer_step():
                self._handle_nonfinite()
                continue
            self._advance()
            self._maybe_log()
            self._maybe_evaluate()
            self._maybe_save()
        return self._finish()

    def _start(self) -> None:
        """Run info, resume (weights, optimizer, data position, random generators), writers."""
        t = self.cfg.train
        self.output_dir.mkdir(parents=True, exist_ok=True)
        resume_path = resolve_resume(self.cfg) if self.resume_path == "from config" else self.resume_path
        if resume_path is None and t.resume is None:
            self._refuse_to_overwrite_an_earlier_run()
        log_rows = self._read_log_for_resume() if t.resume is not None else None
        if resume_path is not None:
            self.resume_from(resume_path)
            if self.state.step >= t.max_steps:
                raise UserError(f"train.max_steps={t.max_steps}: {resume_path} is already at step {self.state.step}, "
                                "so not one step would be trained (and no model saved as complete); raise "
                                f"train.max_steps above {self.state.step} to train on, or use {resume_path} as it is")
        if log_rows is not None:
            self._rewrite_log(log_rows, self.state.step)
        if self.is_main:
            write_run_info(self.output_dir, self.cfg)
        if self.is_main and t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self.model.train()
        self.progress = tqdm(total=t.max_steps, initial=self.state.step, desc="train", disable=not (self.is_main and self.show_progress),
                             dynamic_ncols=True)
        self.batch_stream = self._batches()
        self.window = _LogWindow()

    def _refuse_to_overwrite_an_earlier_run(self) -> None:
        """A fresh start (no train.resume) in an output_dir that holds another run's checkpoints would
        prune them and mix two runs' checkpoints for a later `--resume auto`: a UserError instead."""
        steps, _ = list_checkpoints(self.output_dir / CHECKPOINTS)
        if steps:
            raise UserError(f"train.output_dir={self.output_dir} holds the checkpoints of an earlier run (newest: "
                            f"{steps[-1].name}); continue it with --resume auto (train.resume=auto), or choose "
                            "another train.output_dir")

    def _optimizer_step(self) -> bool:
        """Forward/backward over `train.grad_accum` micro-batches; accelerate applies the optimizer
        step when gradients sync (the last micro-batch, or the end of an epoch's loader). False,
        with the gradients dropped, as soon as a loss is not finite on any process."""
        t, model = self.cfg.train, self.model
        for _ in range(t.grad_accum):
            batch = next(self.batch_stream)
            with self.accelerator.accumulate(model):
                out = model(**batch)
                loss = out.loss if self.extra_loss is None else out.loss + self.extra_loss(model)
                finite = self.accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all()
                if not finite:
                    self.optimizer.zero_grad(set_to_none=True)
                    return False
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and t.grad_clip > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.window.add(out, len(batch["pixel_values"]) * self.accelerator.num_processes)
        return True

    def _handle_nonfinite(self) -> None:
        """Count a skipped step; stop the run after `train.max_nonfinite_steps` in a row."""
        self.state.nonfinite_in_a_row += 1
        self.state.nonfinite_total += 1
        print(f"[medvlm] step {self.state.step}: non-finite loss, step skipped "
              f"({self.state.nonfinite_in_a_row} in a row)")
        if self.state.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise RuntimeError(
                f"training stopped: {self.state.nonfinite_in_a_row} steps in a row had a non-finite loss "
                f"(at step {self.state.step}); lower train.learning_rate, check the data, or resume from "
                f"the last checkpoint in {self.output_dir / CHECKPOINTS}")

    def _advance(self) -> None:
        """A finite step is done: the schedule and the step count move on."""
        self.state.nonfinite_in_a_row = 0
        self.scheduler.step()
        self.state.step += 1
        self.progress.update(1)

    def _maybe_log(self) -> None:
        """Every `train.log_every` steps (and at the last): the window's mean losses, lr, throughput."""
        t, step = self.cfg.train, self.state.step
        if not (step % t.log_every == 0 or step == t.max_steps):
            return
        self._sync_skipped_items()
        record = {"step": step, "lr": self.scheduler.get_last_lr()[0], "samples_per_s": self.window.samples_per_s(),
                  "nonfinite_total": self.state.nonfinite_total, "skipped_items": len(self.state.skipped_items),
                  **self.window.mean_losses()}
        if self.window.logit_scale is not None:
            record["logit_scale"] = self.window.logit_scale
        self.progress.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}")
        self._log(record)
        self.window = _LogWindow()

    def _maybe_evaluate(self) -> None:
        t, step = self.cfg.train, self.state.step
        if t.eval_every and (step % t.eval_every == 0 or step == t.max_steps):
            self._run_evaluation(step)

    def _maybe_save(self) -> None:
        """A periodic checkpoint (the last step is saved as `final` instead)."""
        t, step = self.cfg.train, self.state.step
        if t.save_every and step % t.save_every == 0 and step < t.max_steps:
            self.save_checkpoint()

    def _run_evaluation(self, step: int) -> None:
        results = self.evaluate()
        if not results:
            return
        self._log({"step": step, **results})
        self.state.history.append({"step": step, **results})
        name, sign = _selection_metric(self.cfg.train)
        if self.cfg.train.early_stopping_patience and name not in results:
            raise UserError(f"train.early_stopping_metric={name!r} is not among the validation figures of this run: "
                            f"{', '.join(sorted(k for k in results if isinstance(results[k], float)))}")
        metric = results.get(name)
        if metric is not None and math.isfinite(metric) and (self.state.best_metric is None
                                                             or sign * metric < sign * self.state.best_metric):
            self.state.best_metric, self.state.best_step = metric, step
            self._save_best(step)
        if self.is_main:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in results.items() if isinstance(v, float))
            tqdm.write(f"[medvlm] step {step}: {shown}")
            if self._patience_spent():
                tqdm.write(f"[medvlm] early stopping at step {step}: {name} has not improved in "
                           f"{self.cfg.train.early_stopping_patience} evaluations since step {self.state.best_step} "
                           f"({self.state.best_metric:.4f})")

    # -- early stopping
    def _patience_spent(self) -> bool:
        """`train.early_stopping_patience` evaluations with a validation loss since the best one."""
        patience, best = self.cfg.train.early_stopping_patience, self.state.best_step
        if not patience or best is None:
            return False
        name = _selection_metric(self.cfg.train)[0]
        since = [row for row in self.state.history if row["step"] > best and row.get(name) is not None]
        return len(since) >= patience

    def _save_best(self, step: int) -> None:
        """With early stopping, a new best model is kept as a checkpoint (pruning keeps the best),
        unless the periodic one or `final` will hold this step anyway."""
        t = self.cfg.train
        if t.early_stopping_patience and step < t.max_steps and not (t.save_every and step % t.save_every == 0):
            self.save_checkpoint()

    def _restore_best(self) -> dict | None:
        """The evaluation `final` is written with: with early stopping the best one, whose weights
        are loaded back from its checkpoint unless they are the current ones; else the latest."""
        history, best = self.state.history, self.state.best_step
        if not self.cfg.train.early_stopping_patience or best is None:
            return history[-1] if history else None
        if best != self.state.step:
            path = self.output_dir / CHECKPOINTS / f"step-{best:07d}"
            problem = checkpoint_problem(path)
            if problem:
                log.warning("early stopping: the best checkpoint %s cannot be read (%s); final/ holds the weights of "
                            "step %d instead", path, problem, self.state.step)
                return history[-1]
            # only the weights matter now: the optimizer, schedule and generators it restores too are not used again
            load_training_checkpoint(path, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler)
            print(f"[medvlm] final: the model of step {best}, the best {_selection_metric(self.cfg.train)[0]} "
                  f"({self.state.best_metric:.4f}); "
                  f"training ran to step {self.state.step}")
        return next(row for row in history if row["step"] == best)

    def _finish(self) -> Path:
        """The final model directory, the trainer state and the loss curve."""
        self.progress.close()
        self.accelerator.wait_for_everyone()
        self._sync_skipped_items()
        final = self.output_dir / "final"
        if self.is_main:
            latest = self._restore_best()
            model = exportable(self.accelerator.unwrap_model(self.model))
            latest = {k.removeprefix("val_"): v for k, v in latest.items()} if latest else None
            write_atomically(final, lambda tmp: save_model_dir(tmp, model, self.processor, self.cfg, latest))
            atomic_write_text(self.output_dir / STATE_FILE, json.dumps(asdict(self.state), indent=1))
            stopping = ({"early_stopping": {"best_step": self.state.best_step, "metric": _selection_metric(self.cfg.train)[0],
                                            "best_value": self.state.best_metric,
                                            "stopped_early": self.state.step < self.cfg.train.max_steps}}
                        if self.cfg.train.early_stopping_patience else {})
            update_run_info(self.output_dir, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), steps=self.state.step,
                            skipped=self.skip_report(), **stopping)
            plot_loss_curve(self.output_dir / "metrics.jsonl", self.output_dir / "loss_curve.png")
            self._print_skips()
        if self.writer is not None:
            self.writer.close()
        self.accelerator.wait_for_everyone()
        return final

    # -- skipped images (data.on_error=skip)
    def _sync_skipped_items(self) -> None:
        """state.skipped_items from the training set's table of skipped records, merged over the
        distributed processes (each reads other records, so each table holds a part)."""
        table = self.train_set.bad
        if self.accelerator.num_processes > 1:
            gathered = self.accelerator.gather(table.to(self.accelerator.device))  # (P * N,)
            table.copy_(gathered.view(self.accelerator.num_processes, -1).max(dim=0).values.cpu())
        self.state.skipped_items = self.train_set.skipped_items()

    def skip_counts(self) -> dict:
        """{reason: n} of the training records skipped so far, each counted once."""
        items = self.state.skipped_items or self.train_set.skipped_items()
        return dict(sorted(Counter(items.values()).items()))

    def skip_report(self) -> dict:
        """What run_info.json keeps: the records left out while loading and while training, by reason."""
        loading, training = self.loading_skips, self.skip_counts()
        return {"loading": {"total": sum(loading.values()), **loading},
                "training": {"total": sum(training.values()), **training}}

    def _print_skips(self) -> None:
        loading, training = self.loading_skips, self.skip_counts()
        if loading or training or self.cfg.data.on_error == "skip":
            print(f"[medvlm] train: {_counts(loading, 'record(s) skipped while loading')}, "
                  f"{_counts(training, 'image(s) skipped while training')} (totals in run_info.json)")


def _selection_metric(train) -> tuple[str, int]:
    """(the validation metric the best step is chosen by, +1 when lower is better else -1): a
    loss is minimised, anything else (an accuracy, an F1) maximised."""
    name = train.early_stopping_metric
    return name, 1 if name.endswith("loss") else -1


def _check_early_stopping(train, validation_records) -> None:
    """train.early_stopping_patience counts evaluations of a validation figure: it needs both."""
    if train.early_stopping_patience and not (train.eval_every and validation_records):
        why = "train.eval_every=0" if not train.eval_every else "the validation split is empty"
        raise UserError(f"train.early_stopping_patience={train.early_stopping_patience} counts evaluations of the "
                        f"validation loss, but {why}; set train.eval_every > 0 and give validation data (e.g. "
                        "data.options.validation_fraction), or set train.early_stopping_patience=null")


def skipped_while_loading(records) -> dict:
    """{reason: n} of the bad items a loader left out of `records` (a RecordList's `skipped`, a
    prepared cache's `info["skipped"]`); {} for a plain list."""
    counts = getattr(records, "skipped", None)
    if counts is None:
        counts = (getattr(records, "info", None) or {}).get("skipped") or {}
    return {str(reason): int(n) for reason, n in sorted(dict(counts).items()) if n}


def _counts(counts: dict, what: str) -> str:
    """'3 <what> (missing_file: 1, unreadable_file: 2)', or '0 <what>'."""
    total = sum(counts.values())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    return f"{total} {what}" + (f" ({reasons})" if total else "")


def read_log(path: Path) -> tuple[list[dict], list[tuple[int, str]], int]:
    """A JSONL log: (its records, [(line number, why)] of the lines that are not JSON objects, the
    number of its last non-blank line). A missing file is an empty log."""
    rows, bad, last = [], [], 0
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if Path(path).is_file() else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number
        try:
            row = json.loads(line)
        except ValueError as error:
            bad.append((number, str(error)))
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append((number, f"a JSON {type(row).__name__}, not an object"))
    return rows, bad, last


def plot_loss_curve(metrics_file: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _, _ = read_log(metrics_file)
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
