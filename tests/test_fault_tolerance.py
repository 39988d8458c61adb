"""Runs survive faults: SIGKILL + `--resume auto` reproduces the uninterrupted run, damaged
checkpoints are skipped with a message, non-finite losses are skipped and then stop the run."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvlm.config import load_config
from medvlm.checkpointing import checkpoint_problem, find_resumable_checkpoint
from medvlm.engine import Trainer
from tiny import ROOT, TINY, train_command


def final_weights(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    subprocess.run(train_command(out), check=True, capture_output=True, timeout=600)
    return out


def test_sigkill_then_resume_auto_reproduces_the_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(train_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000006").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists()

    resumed = subprocess.run(train_command(out, "--resume", "auto"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    expected, got = final_weights(uninterrupted), final_weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    # the loss sequence is the same too
    read = lambda p: [line for line in (p / "metrics.jsonl").read_text().splitlines()]
    strip = lambda lines: [__import__("json").loads(l)["loss"] for l in lines if '"loss"' in l]
    assert strip(read(out)) == strip(read(uninterrupted))


def test_truncated_and_partial_checkpoints_are_skipped_with_a_message(uninterrupted, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    steps = sorted((out / "checkpoints").glob("step-*"))
    newest, older = steps[-1], steps[-2]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    assert "truncated" in checkpoint_problem(newest)
    assert find_resumable_checkpoint(out) == older
    assert "skipping checkpoint" in capsys.readouterr().out
    (older / "COMPLETE").unlink()  # as if killed while writing
    assert "no COMPLETE marker" in checkpoint_problem(older)
    assert find_resumable_checkpoint(out) == steps[-3]


class _NanAt(torch.nn.Module):
    """Wraps a model; the loss is NaN on the listed calls."""

    def __init__(self, model, nan_calls):
        super().__init__()
        self.inner, self.nan_calls, self.calls = model, set(nan_calls), 0

    def forward(self, **batch):
        out = self.inner(**batch)
        self.calls += 1
        if self.calls in self.nan_calls:
            out["loss"] = out.loss * float("nan")
        return out

    def optimizer_groups(self, weight_decay):
        return self.inner.optimizer_groups(weight_decay)


def _tiny_trainer(tmp_path, nan_calls, max_steps):
    from medvlm.data.synthetic import synthetic_records
    from medvlm.runs import build_model, build_processor

    cfg = load_config(ROOT / "configs/demo.yaml", [*TINY, f"train.output_dir={tmp_path}", f"train.max_steps={max_steps}",
                                                   "train.eval_every=0", "train.save_every=0",
                                                   "train.max_nonfinite_steps=3", "train.tensorboard=false"])
    records = synthetic_records(16, seed=1, image_size=32)
    processor = build_processor(cfg, records)
    model = _NanAt(build_model(cfg, processor), nan_calls)
    return Trainer(cfg, model, processor, records), model


def test_a_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr("medvlm.engine.base_model", lambda m: m.inner if isinstance(m, _NanAt) else m)
    monkeypatch.setattr("medvlm.engine.exportable", lambda m: m.inner if isinstance(m, _NanAt) else m)
    trainer, _ = _tiny_trainer(tmp_path, nan_calls=[2], max_steps=3)
    trainer.train()
    assert trainer.state.step == 3 and trainer.state.nonfinite_total == 1


def test_training_stops_after_n_nonfinite_steps_in_a_row(tmp_path, monkeypatch):
    monkeypatch.setattr("medvlm.engine.base_model", lambda m: m.inner if isinstance(m, _NanAt) else m)
    trainer, _ = _tiny_trainer(tmp_path, nan_calls=range(2, 100), max_steps=10)
    with pytest.raises(RuntimeError, match="3 steps in a row had a non-finite loss"):
        trainer.train()
