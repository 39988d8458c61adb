"""One site's part of a round: train from the global weights for `federated.local_steps` with
medvlm's own Trainer (its losses, optimiser, mixed precision and checkpoints), and score the
global weights on the site's validation split.

A round is a short run of its own under `<site dir>/rounds/round-NNNN/` (its `final/` is the
site's local model after that round, `metrics.jsonl` its losses); the learning rate the server
chose for the round is held constant within it, and the data order changes from round to
round (the seed is the run seed plus the round).
"""

import copy
import json
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from medvlm.config import RunConfig
from medvlm.engine import Trainer, mean_losses
from medvlm.processing import Collator, RecordDataset

from .weights import load_arrays, to_arrays

ROUNDS = "rounds"


def site_model(cfg: RunConfig, processor, arrays):
    """The model every end builds from the same config (towers frozen or LoRA-wrapped as set),
    holding `arrays` (the global weights)."""
    from medvlm.finetuning import cast_weights, prepare_for_finetuning
    from medvlm.runs import build_model

    model = build_model(cfg, processor)
    model = cast_weights(prepare_for_finetuning(model, cfg.train.freeze, cfg.train.lora), cfg.train.dtype)
    if arrays is not None:
        load_arrays(model, arrays)
    return model


def round_config(cfg: RunConfig, folder: Path, server_round: int, learning_rate: float) -> RunConfig:
    """The Trainer settings of one local round: its steps, its constant rate, no evaluation."""
    cfg = copy.deepcopy(cfg)
    t = cfg.train
    t.output_dir, t.max_steps, t.learning_rate = str(folder), cfg.federated.local_steps, learning_rate
    t.warmup_steps, t.min_lr_ratio = 0, 1.0  # the schedule over rounds is the server's
    t.seed = t.seed + server_round  # a new data order and augmentation every round
    t.eval_every, t.save_every, t.early_stopping_patience = 0, 0, None
    t.log_every, t.tensorboard, t.resume = min(t.log_every, t.max_steps), False, None
    return cfg


def proximal_term(model, mu: float):
    """FedProx's mu/2 * ||w - w_global||^2 over the trainable weights, the global ones being
    those the round started from (None when mu is 0)."""
    if mu <= 0:
        return None
    anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def term(_model) -> torch.Tensor:
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in anchor)

    return term


def distance(model, arrays) -> float:
    """L2 distance between the model's trainable weights and those of `arrays` (the norm
    statistics, which no loss term holds back, left out)."""
    received = arrays.to_torch_state_dict()
    squares = [((p.detach().float().cpu() - received[n]) ** 2).sum() for n, p in model.named_parameters()
               if p.requires_grad]
    return float(torch.stack(squares).sum().sqrt())


def train_round(cfg: RunConfig, processor, arrays, records: list[dict], folder: Path, server_round: int,
                learning_rate: float, proximal_mu: float = 0.0, keep_last: int = 2):
    """(the site's travelling weights after the round, its metrics)."""
    import accelerate

    round_cfg = round_config(cfg, folder / ROUNDS / f"round-{server_round:04d}", server_round, learning_rate)
    accelerate.utils.set_seed(round_cfg.train.seed)
    model = site_model(cfg, processor, arrays)
    trainer = Trainer(round_cfg, model, processor, records, None, resume_path=None,
                      extra_loss=proximal_term(model, proximal_mu), show_progress=False)
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    metrics = {**_last_losses(Path(round_cfg.train.output_dir)), "num-examples": len(records),
               "local-steps": trainer.state.step, "update-norm": distance(trained, arrays)}
    _prune_rounds(folder / ROUNDS, keep_last)
    return to_arrays(trained), metrics


def validation_losses(cfg: RunConfig, processor, arrays, records: list[dict]) -> dict:
    """The global weights' mean losses on the site's validation records (every one of them)."""
    model = site_model(cfg, processor, arrays).eval()
    loader = DataLoader(RecordDataset(records, processor, cfg.data.on_error), batch_size=cfg.train.batch_size,
                        collate_fn=Collator(processor))
    return {f"val_{k}": v for k, v in mean_losses(model, loader, torch.device("cpu")).items()}


def _last_losses(run_dir: Path) -> dict:
    """The round's last logged training losses, as `train_<name>`."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = next((row for row in reversed(rows) if "loss" in row), {})
    return {f"train_{k}": float(v) for k, v in last.items() if k.endswith("loss")}


def _prune_rounds(folder: Path, keep_last: int) -> None:
    """Keep the site's newest `keep_last` round folders."""
    rounds = sorted(p for p in folder.glob("round-*") if p.is_dir())
    for old in rounds[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
