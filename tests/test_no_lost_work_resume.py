"""`--resume auto` tolerates what an interrupted run ordinarily leaves behind (a torn last log
line, stray folders beside the checkpoints) and says what it passed over; what would lose or mix
work (a torn line mid-log, a fresh start over an earlier run, nothing left to train) is a one-line
UserError that changes nothing."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from medvlm import cli
from medvlm.checkpointing import list_checkpoints
from tiny import ROOT, TINY

STEPS = 4


def train_argv(out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", *TINY,
            f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=3", "train.eval_every=0",
            "train.tensorboard=false", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert cli.main(train_argv(out)) == 0
    return out


@pytest.fixture
def interrupted(finished, tmp_path):
    """The run as a kill after step 3 leaves it: step-0000002 saved, no final, log lines up to step 3."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "final")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= 3))
    return out


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_torn_last_log_line_is_dropped_and_the_run_finishes(interrupted, capsys):
    with open(interrupted / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lr": 0.0003, "lo')  # killed mid-write
    assert cli.main(train_argv(interrupted, "--resume", "auto")) == 0
    said = capsys.readouterr().out
    assert "resumed from" in said and "step-0000002" in said
    assert "dropping the torn last line 4" in said and "dropping 1 log line(s) written after step 2" in said
    assert logged_steps(interrupted) == [1, 2, 3, 4]  # every line JSON, each step once
    assert (interrupted / "final" / "COMPLETE").is_file()


def test_stray_folders_beside_the_checkpoints_are_ignored_with_the_reason(interrupted, capsys):
    checkpoints = interrupted / "checkpoints"
    shutil.copytree(checkpoints / "step-0000002", checkpoints / "step-0000002.bak")
    (checkpoints / "notes").mkdir()
    (checkpoints / "notes" / "todo.txt").write_text("compare with the baseline\n")
    (checkpoints / ".tmp-step-0000004-999").mkdir()
    assert cli.main(train_argv(interrupted, "--resume", "auto")) == 0
    said = capsys.readouterr().out
    assert "resumed from" in said and "step-0000002" in said
    assert f"ignoring {checkpoints / 'step-0000002.bak'}: a folder not named step-<digits>" in said
    assert f"ignoring {checkpoints / 'notes'}" in said and "interrupted checkpoint write" in said
    assert (checkpoints / "step-0000002.bak" / "COMPLETE").is_file()  # never pruned: not ours
    assert (checkpoints / "notes" / "todo.txt").is_file()
    assert (interrupted / "final" / "COMPLETE").is_file()


def test_a_torn_line_before_the_last_names_its_line_and_changes_nothing(interrupted, capsys):
    log = interrupted / "metrics.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1][:15]
    log.write_text("".join(line + "\n" for line in lines))
    before = digest(log)
    assert cli.main(train_argv(interrupted, "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert f"{log}, line 2: not a JSON record" in err and "delete line 2" in err
    assert digest(log) == before and not (interrupted / "final").exists()


def test_a_fresh_start_over_an_earlier_runs_checkpoints_is_refused(interrupted, capsys):
    before = digest(interrupted / "checkpoints" / "step-0000002" / "model.safetensors")
    assert cli.main(train_argv(interrupted)) == 2
    err = capsys.readouterr().err
    assert "holds the checkpoints of an earlier run" in err and "step-0000002" in err and "--resume auto" in err
    assert digest(interrupted / "checkpoints" / "step-0000002" / "model.safetensors") == before


def test_max_steps_already_reached_by_the_checkpoint_trains_nothing_and_saves_nothing(interrupted, capsys):
    assert cli.main(train_argv(interrupted, "train.max_steps=2", "train.resume=auto")) == 2
    err = capsys.readouterr().err
    assert "train.max_steps=2" in err and "already at step 2" in err
    assert not (interrupted / "final").exists()


def test_list_checkpoints_says_why_each_other_entry_is_not_one(tmp_path):
    for name in ("step-0000010", "step-0000002", "step-0000002.bak", "step-3-eval", ".tmp-step-0000012-77"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-0000004").write_text("a file, not a folder")
    steps, others = list_checkpoints(tmp_path)
    assert [p.name for p in steps] == ["step-0000002", "step-0000010"]  # by step number
    why = {p.name: reason for p, reason in others}
    assert set(why) == {"step-0000002.bak", "step-3-eval", ".tmp-step-0000012-77", "step-0000004"}
    assert "a file not named" in why["step-0000004"] and "interrupted" in why[".tmp-step-0000012-77"]
    assert list_checkpoints(tmp_path / "none") == ([], [])


def test_resume_auto_with_nothing_to_resume_searches_and_says_so_once(tmp_path, capsys):
    assert cli.main(train_argv(tmp_path / "new", "train.resume=auto", "train.max_steps=1")) == 0
    assert capsys.readouterr().out.count("resume auto: no complete checkpoint") == 1
