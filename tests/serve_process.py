"""A `resnet serve` process for the tests: started on a free loopback port, its stderr kept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from conftest import SAMPLE_IMAGES, TINY

CHELSEA = SAMPLE_IMAGES / "chelsea.jpg"
COFFEE = SAMPLE_IMAGES / "coffee.jpg"
STARTUP_S = 180


@dataclass
class Server:
    """A `resnet serve` process and what it wrote on stderr."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    url: str = ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while not self.url:
            self._check_alive(deadline)
            for line in list(self.lines):
                found = re.search(r"listening on (http://\S+);", line)
                if found:
                    self.url = found.group(1)
        while True:
            self._check_alive(deadline)
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass

    def _check_alive(self, deadline: float) -> None:
        assert self.process.poll() is None, "server died:\n" + "".join(self.lines)
        assert time.monotonic() < deadline, "server not ready:\n" + "".join(self.lines)
        time.sleep(0.1)

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(self.url + "/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = "^" + re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)$"
        found = re.search(pattern, text, re.MULTILINE)
        assert found is not None, f"no series {name}{{{want}}} in /metrics:\n{text}"
        return float(found.group(1))

    def metric_or_zero(self, name: str, **labels: str) -> float:
        """A counter that exists only once counted (a status never seen yet): 0 before."""
        text = requests.get(self.url + "/metrics", timeout=10).text
        if not re.search("^" + re.escape(name) + r"[{ ]", text, re.MULTILINE):
            raise AssertionError(f"no metric {name} at all in /metrics:\n{text}")
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = "^" + re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)$"
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


def start_server(weights: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    command = [sys.executable, "-m", "resnet_cli", "serve", "--weights", str(weights),
               "--image-size", str(TINY), "--port", "0", "--device", "cpu", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=env)
    server = Server(process)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            server.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return server


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(30)
