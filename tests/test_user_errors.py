"""A user's mistake (a bad config key, a missing file, bad data) is one line on stderr and exit
status 2; anything else is a bug and keeps its traceback."""

import subprocess
import sys

import pytest

from medvlm import cli
from medvlm.data.records import DataError
from medvlm.data.sources import load_split
from medvlm.errors import UserError
from tiny import ROOT, TINY, load_script

DEMO = str(ROOT / "configs/demo.yaml")


def _one_error_line(result, command: str, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"medvlm {command}: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize("entry", [["train.py"], ["-m", "medvlm.cli", "train"]], ids=["train.py", "medvlm train"])
def test_an_unknown_config_key_is_one_line_and_exit_status_2(entry):
    args = [sys.executable, *[str(ROOT / a) if a.endswith(".py") else a for a in entry],
            "--config", DEMO, "train.max_stepz=3"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    _one_error_line(result, "train", "train.max_stepz", "max_steps")


def test_an_unknown_timm_model_through_train_py_is_one_line(tmp_path):
    args = [sys.executable, str(ROOT / "train.py"), "--config", DEMO, f"train.output_dir={tmp_path}", *TINY,
            "model.vision.model_name=resnet_nonexistent"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    _one_error_line(result, "train", "model.vision.model_name='resnet_nonexistent'", "not a timm model")


def test_eval_py_with_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert load_script("eval").main(["--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medvlm eval: error: --checkpoint") and "nope" in err and "does not exist" in err


def test_a_missing_data_root_names_the_key(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert cli.main(["train", "--config", DEMO, "data.dataset=csv", f"data.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "missing.csv" in err


def test_a_resume_dir_that_is_not_a_checkpoint_is_a_user_error(tmp_path, capsys):
    assert cli.main(["train", "--config", DEMO, "--resume", str(tmp_path / "nope"),
                     f"train.output_dir={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert "train.resume" in err and "nope" in err


def test_unknown_data_options_are_named(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image,text\na.png,hi\n")
    with pytest.raises(UserError, match=r"data.options: unknown option\(s\) \['imag_column'\].*image_column"):
        load_split("csv", "train", root=str(table), options={"imag_column": "image"})


def test_data_errors_are_user_errors():
    assert issubclass(DataError, UserError) and issubclass(UserError, ValueError)


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ValueError("not a user error"), KeyError("k")])
def test_an_internal_error_keeps_its_traceback(monkeypatch, error):
    def broken(argv):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "train", broken)
    with pytest.raises(type(error)):
        cli.main(["train"])
    with pytest.raises(type(error)):
        load_script("train").main([])


def test_a_user_error_raised_by_a_command_is_caught(monkeypatch, capsys):
    def bad(argv):
        raise UserError("foo.yaml, line 3: bad value")

    monkeypatch.setitem(cli.COMMANDS, "eval", bad)
    assert load_script("eval").main([]) == 2
    assert capsys.readouterr().err == "medvlm eval: error: foo.yaml, line 3: bad value\n"
