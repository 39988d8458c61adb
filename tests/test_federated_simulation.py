"""`medvlm federate` end to end in Flower's simulation engine: rounds, the global checkpoint, and
a server process killed mid-run that resumes after its last round checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from federated_tiny import write_config
from medvlm.checkpointing import model_dir_problem

MEDVLM = [sys.executable, "-m", "medvlm.cli", "federate"]


def federate(config: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([*MEDVLM, "--config", str(config), *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_killed_server_resumes_after_its_last_round_and_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, out)
    first = federate(config, "federated.rounds=4")
    deadline = time.monotonic() + 300
    while not (out / "rounds" / "round-0001" / "COMPLETE").is_file():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "round 1 was never saved"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the server (and its simulation) dies without a word
    first.wait()
    done = max(int(p.name.split("-")[1]) for p in (out / "rounds").glob("round-*") if (p / "COMPLETE").is_file())
    assert done < 4 and not (out / "final").exists()

    second = federate(config, "federated.rounds=4")
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log
    assert f"resuming the federation after round {done}" in log
    trained_again = [line for line in log.splitlines() if line.startswith("[medvlm] round ")]
    assert [line.split()[2] for line in trained_again] == [f"{r}/4:" for r in range(done + 1, 5)]
    state = json.loads((out / "federation.json").read_text())
    assert [row["round"] for row in state["history"]] == [1, 2, 3, 4]
    assert model_dir_problem(out / "final") is None
    assert json.loads((out / "final" / "federation_state.json").read_text())["round"] == 4


def run_to_the_end(config: Path, *overrides: str) -> str:
    process = federate(config, *overrides)
    log, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log
    return log


def test_differential_privacy_reports_the_epsilon_spent_round_by_round(tmp_path):
    out = tmp_path / "dp"
    run_to_the_end(write_config(tmp_path, out), "federated.strategy=fedprox", "federated.dp_noise_multiplier=0.8",
                   "federated.dp_clipping_norm=2.0")
    rows = json.loads((out / "federation.json").read_text())["history"]
    spent = [row["differential_privacy"] for row in rows]
    assert [s["releases"] for s in spent] == [1, 2] and 0 < spent[0]["epsilon"] < spent[1]["epsilon"]
    assert spent[0]["delta"] == pytest.approx(1e-5) and spent[0]["noise_multiplier"] == pytest.approx(0.8)


def test_secure_aggregation_gives_the_global_weights_plain_fedavg_gives(tmp_path):
    from safetensors.torch import load_file

    plain, secure = tmp_path / "plain", tmp_path / "secure"
    run_to_the_end(write_config(tmp_path, plain), "federated.rounds=1")
    log = run_to_the_end(write_config(tmp_path, secure), "federated.rounds=1", "federated.secure_aggregation=true",
                         "federated.secagg_max_weight=100")
    assert "masked updates back" in log
    a = load_file(str(plain / "final" / "global_arrays.safetensors"))
    b = load_file(str(secure / "final" / "global_arrays.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, worst  # the same FedAvg, up to SecAgg+'s quantisation
