"""A `medvlm serve` process on a free localhost port, for the API and browser tests."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m medvlm.cli serve ...` with its output in `log`; `url` once /healthz answers."""

    def __init__(self, checkpoint, log: Path, *options: str, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "medvlm.cli", "serve", "--checkpoint", str(checkpoint),
                                         "--port", str(self.port), *options], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"medvlm serve exited with {self.process.returncode}:\n{log.read_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"medvlm serve did not answer within {timeout} s:\n{log.read_text()}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.log_path.read_text()
