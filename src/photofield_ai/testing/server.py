"""Start a real photofield-ai server process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(
    workdir: Path,
    visual: Path | None,
    textual: Path | None,
    startup_timeout: float = 120,
    **env: str,
) -> ServerProcess:
    """Run `python -m photofield_ai` as a user would, with PHOTOFIELD_AI_* from `env`."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOFIELD_AI_")}
    full_env.update(
        {
            "PHOTOFIELD_AI_HOST": "127.0.0.1",
            "PHOTOFIELD_AI_PORT": str(port),
            "PHOTOFIELD_AI_MODELS_DIR": str(workdir / "models"),
            "PHOTOFIELD_AI_RUNTIME": "cpu",
            **({"PHOTOFIELD_AI_VISUAL_MODEL": str(visual)} if visual else {}),
            **({"PHOTOFIELD_AI_TEXTUAL_MODEL": str(textual)} if textual else {}),
            **env,
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "photofield_ai"], env=full_env, stdout=log, stderr=log
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        if _is_ready(server.url):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")
