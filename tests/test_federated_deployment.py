"""Flower's deployment engine on 127.0.0.1: a real SuperLink and two SuperNodes as processes
(ports chosen free), `flwr run` of medvlm's Flower app for two rounds of a tiny model, and the
global checkpoint it leaves."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from federated_tiny import write_config
from medvlm.checkpointing import model_dir_problem
from tiny import ROOT

APP = ROOT / "medvlm" / "federated" / "flower-app"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], home: Path, log: Path, cwd: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_health(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the SuperLink on port {port} did not come up")


@pytest.fixture
def federation(tmp_path):
    """A SuperLink and two SuperNodes (synthetic hospitals 0 and 1); stopped afterwards."""
    port, processes = free_port(), []
    processes.append(start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                            "--database", str(tmp_path / "superlink.db"), "--disable-runtime-dependency-installation"],
                           tmp_path / "home-superlink", tmp_path / "superlink.log", tmp_path / "superlink"))
    wait_for_health(port)
    for site in (0, 1):
        processes.append(start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                "--host", "127.0.0.1", "--port", str(free_port()),
                                "--node-config", f"hospital={site} site-dir='{tmp_path / f'site-{site}'}'"],
                               tmp_path / f"home-site-{site}", tmp_path / f"site-{site}.log", tmp_path / f"node-{site}"))
    yield port
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def test_a_superlink_and_two_supernodes_train_two_rounds_into_a_global_checkpoint(federation, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, out)
    cli_home = tmp_path / "home-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\n'
                                          f'address = "127.0.0.1:{federation}"\ninsecure = true\n')
    app = tmp_path / "medvlm-app"
    shutil.copytree(APP, app)
    env = {**os.environ, "FLWR_HOME": str(cli_home), "FLWR_TELEMETRY_ENABLED": "0"}
    run = subprocess.run([str(BIN / "flwr"), "run", str(app), "--stream", "--run-config",
                          f"config='{config}' overrides='federated.min_sites=2 federated.sites=2 data.options.hospitals=3'"],
                         env=env, capture_output=True, text=True, timeout=600)
    logs = run.stdout[-3000:] + run.stderr[-3000:] + "".join(
        (tmp_path / name).read_text()[-2000:] for name in ("superlink.log", "site-0.log", "site-1.log"))
    assert (out / "final" / "COMPLETE").is_file(), logs  # `flwr run` exits 0 even when the ServerApp failed
    assert model_dir_problem(out / "final") is None
    state = json.loads((out / "federation.json").read_text())
    assert state["round"] == 2 and [row["round"] for row in state["history"]] == [1, 2]
    assert sorted(state["sites"]) == ["icu", "outpatient"]  # hospitals 0 and 1, each from its own node config
    assert all(row["failed_sites"] == 0 and len(row["train"]) == 2 for row in state["history"])
    assert (tmp_path / "site-0" / "rounds").is_dir() and (tmp_path / "site-1" / "rounds").is_dir()
