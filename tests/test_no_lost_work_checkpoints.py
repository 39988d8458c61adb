"""Reading a checkpoint never changes it: `medvlm eval` writes beside a model directory, never
into it, and loading one checks its COMPLETE manifest (a damaged file is a one-line UserError
naming it, not a safetensors traceback)."""

import hashlib
import shutil
from pathlib import Path

import pytest

from medvlm import cli
from medvlm.checkpointing import checkpoint_problem, find_resumable_checkpoint, model_dir_problem
from medvlm.errors import UserError
from medvlm.runs import load_trained
from tiny import ROOT, TINY, load_script

FAST_EVAL = ["eval.bootstrap_resamples=5", "eval.max_samples=4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run of 4 steps: checkpoints/step-0000002 and `final` (the last step is saved as final)."""
    out = tmp_path_factory.mktemp("run")
    assert load_script("train").main(["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}", *TINY,
                                      "train.max_steps=4", "train.save_every=2", "train.keep_last=3",
                                      "train.eval_every=0", "train.tensorboard=false"]) == 0
    return out


@pytest.fixture(autouse=True)
def no_meteor(monkeypatch):
    """METEOR runs a JVM (tens of seconds); it is not what these tests are about."""
    monkeypatch.setattr("medvlm.metrics.nlg.meteor_available", lambda: False)


def hashes(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_eval_of_an_intermediate_checkpoint_leaves_it_byte_identical_and_resumable(run, capsys):
    step = run / "checkpoints" / "step-0000002"
    before = hashes(step)
    assert cli.main(["eval", "--checkpoint", str(step), *FAST_EVAL]) == 0
    assert hashes(step) == before  # same files, same bytes: nothing added, nothing rewritten
    out = run / "checkpoints" / "step-0000002-eval"  # beside the checkpoint
    assert (out / "metrics.json").is_file() and (out / "results.md").is_file()
    assert "## Metrics (test split)" in (out / "model_card.md").read_text()
    capsys.readouterr()
    assert checkpoint_problem(step) is None and find_resumable_checkpoint(run) == step
    said = capsys.readouterr().out
    assert "ignoring" in said and "step-0000002-eval" in said and "not named step-<digits>" in said


def test_eval_of_final_writes_final_eval_beside_it(run):
    final = run / "final"
    before = hashes(final)
    assert cli.main(["eval", "--checkpoint", str(final), *FAST_EVAL]) == 0
    assert hashes(final) == before
    assert (run / "final-eval" / "metrics.json").is_file() and (run / "final-eval" / "model_card.md").is_file()
    assert not (final / "eval").exists() and model_dir_problem(final) is None


def test_an_eval_out_inside_the_model_directory_is_refused(run, capsys):
    final = run / "final"
    before = hashes(final)
    assert cli.main(["eval", "--checkpoint", str(final), "--out", str(final / "eval")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "inside the model directory" in err and "final-eval" in err
    assert hashes(final) == before


def damaged_copy(run: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "final"
    shutil.copytree(run / "final", copy)
    damage(copy)
    return copy


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_truncated_weights_are_one_line_naming_the_file(run, tmp_path, capsys, command):
    copy = damaged_copy(run, tmp_path, lambda d: truncate(d / "model.safetensors"))
    image = tmp_path / "x.png"
    image.write_bytes(b"")  # never read: the model directory is refused first
    argv = ["--checkpoint", str(copy)] + ([str(image)] if command == "generate" else [])
    assert cli.main([command, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"medvlm {command}: error:" in err and "model.safetensors is truncated" in err and str(copy) in err


def test_damaged_or_missing_files_are_named(run, tmp_path):
    def flip_a_byte(d):
        data = bytearray((d / "tokenizer.json").read_bytes())
        data[10] ^= 1
        (d / "tokenizer.json").write_bytes(bytes(data))

    with pytest.raises(UserError, match=r"tokenizer\.json is corrupted \(checksum mismatch"):
        load_trained(damaged_copy(run, tmp_path / "a", flip_a_byte))
    with pytest.raises(UserError, match=r"processor_config\.json is missing"):
        load_trained(damaged_copy(run, tmp_path / "b", lambda d: (d / "processor_config.json").unlink()))


def test_a_directory_without_a_manifest_still_loads_and_its_bad_weights_are_named(run, tmp_path):
    hand_saved = damaged_copy(run, tmp_path / "a", lambda d: (d / "COMPLETE").unlink())
    model, processor, cfg = load_trained(hand_saved)
    assert cfg is not None and processor.image_size == 32

    def unlisted_and_truncated(d):
        (d / "COMPLETE").unlink()
        truncate(d / "model.safetensors")

    with pytest.raises(UserError, match=r"model\.safetensors cannot be read"):
        load_trained(damaged_copy(run, tmp_path / "b", unlisted_and_truncated))


def test_an_edited_model_card_does_not_make_a_checkpoint_unusable(run, tmp_path, caplog):
    """`medvlm eval` used to rewrite README.md inside the checkpoint; such checkpoints stay usable."""
    step = tmp_path / "checkpoints" / "step-0000002"
    shutil.copytree(run / "checkpoints" / "step-0000002", step)
    (step / "README.md").write_text("# rewritten after training\n")
    assert checkpoint_problem(step) is None and find_resumable_checkpoint(tmp_path) == step
    load_trained(step)
    assert "README.md differs from the COMPLETE manifest" in caplog.text
