"""train.early_stopping_patience: training stops once that many evaluations have not lowered the
validation loss, and `final` holds the model of the lowest one (tiny model; the validation losses
are scripted, so when it stops does not depend on how a tiny model happens to learn)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medvlm.engine import Trainer
from tiny import ROOT, TINY, load_script

LOSSES = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1, 3.2]  # best at the 2nd evaluation


@pytest.fixture
def scripted_validation(monkeypatch):
    """Trainer.evaluate returns the next of LOSSES as val_loss (and counts its calls)."""
    calls = []

    def evaluate(self):
        calls.append(self.state.step)
        return {"val_loss": LOSSES[len(calls) - 1]}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return calls


def train(out, *extra) -> int:
    return load_script("train").main(["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", *TINY,
                                      "train.max_steps=20", "train.eval_every=2", "train.save_every=0",
                                      "train.keep_last=1", "train.tensorboard=false", *extra])


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_early_stopping_stops_and_keeps_the_best(tmp_path, scripted_validation, capsys):
    out = tmp_path / "run"
    assert train(out, "train.early_stopping_patience=2", "train.save_every=8") == 0
    # evaluations at steps 2 (3.0), 4 (2.0, best), 6 (2.5), 8 (2.6): two without improvement
    assert scripted_validation == [2, 4, 6, 8]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["best_step"] == 4 and state["best_metric"] == 2.0
    info = json.loads((out / "run_info.json").read_text())["early_stopping"]
    assert info == {"best_step": 4, "metric": "val_loss", "best_value": 2.0, "stopped_early": True}
    best = out / "checkpoints" / "step-0000004"  # saved when it was the best; pruning keeps it
    assert best.is_dir()
    final, kept, last_step = weights(out / "final"), weights(best), weights(out / "checkpoints" / "step-0000008")
    assert final.keys() <= kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)
    assert not all(torch.equal(final[k], last_step[k]) for k in final)  # the weights of step 8 moved on
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in last) == 8
    assert "early stopping at step 8" in capsys.readouterr().out


def test_without_patience_training_runs_to_max_steps_and_final_is_the_last(tmp_path, scripted_validation):
    out = tmp_path / "run"
    assert train(out, "train.max_steps=8") == 0
    assert scripted_validation == [2, 4, 6, 8]
    assert json.loads((out / "trainer_state.json").read_text())["best_step"] == 4
    assert not (out / "checkpoints").is_dir() or not any((out / "checkpoints").iterdir())  # nothing extra saved
    assert "early_stopping" not in json.loads((out / "run_info.json").read_text())


def test_best_at_the_last_evaluation_is_the_last_model(tmp_path, monkeypatch):
    losses = iter([3.0, 2.0, 1.0])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"val_loss": next(losses)})
    out = tmp_path / "run"
    assert train(out, "train.max_steps=6", "train.early_stopping_patience=1") == 0
    info = json.loads((out / "run_info.json").read_text())["early_stopping"]
    assert info == {"best_step": 6, "metric": "val_loss", "best_value": 1.0, "stopped_early": False}


def test_patience_needs_evaluations(tmp_path, capsys):
    assert load_script("train").main(["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={tmp_path}",
                                      *TINY, "train.max_steps=2", "train.eval_every=0",
                                      "train.early_stopping_patience=3"]) == 2  # a user error, before any step
    assert "early_stopping_patience=3 counts evaluations of the validation loss, but train.eval_every=0" in \
        capsys.readouterr().err
    assert not (tmp_path / "final").exists()


def test_an_accuracy_is_maximised(tmp_path, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"val_loss": 1.0, "val_vqa_closed_acc": next(scores)})
    out = tmp_path / "run"
    assert train(out, "train.max_steps=10", "train.early_stopping_patience=2",
                 "train.early_stopping_metric=val_vqa_closed_acc") == 0
    info = json.loads((out / "run_info.json").read_text())["early_stopping"]
    assert info == {"best_step": 4, "metric": "val_vqa_closed_acc", "best_value": 0.7, "stopped_early": True}


def test_an_unknown_metric_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"val_loss": 1.0})
    assert train(tmp_path / "run", "train.max_steps=4", "train.early_stopping_patience=2",
                 "train.early_stopping_metric=val_closed_acc") == 2
    assert "val_closed_acc" in capsys.readouterr().err
