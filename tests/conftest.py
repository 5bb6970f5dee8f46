"""Shared fixtures: generated tiny CLIP models and real servers on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from photofield_ai.testing.models import generate

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_float32(models_dir: Path) -> tuple[Path, Path]:
    return generate("tiny", "float32", models_dir)


@pytest.fixture(scope="session")
def tiny_float16(models_dir: Path) -> tuple[Path, Path]:
    return generate("tiny", "float16", models_dir)


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

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def start_server(
    tmp_path: Path, visual: Path | None, textual: Path | None, **env: str
) -> ServerProcess:
    """Run `python -m photofield_ai` as a user would, on a free loopback port."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOFIELD_AI_")}
    full_env.update({
        "PHOTOFIELD_AI_HOST": "127.0.0.1",
        "PHOTOFIELD_AI_PORT": str(port),
        "PHOTOFIELD_AI_MODELS_DIR": str(tmp_path / "models"),
        "PHOTOFIELD_AI_RUNTIME": "cpu",
        **({"PHOTOFIELD_AI_VISUAL_MODEL": str(visual)} if visual else {}),
        **({"PHOTOFIELD_AI_TEXTUAL_MODEL": str(textual)} if textual else {}),
        **env,
    })
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "photofield_ai"], env=full_env, stdout=log, stderr=log
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    """A server on the tiny float32 models with batching on (shared by the API tests)."""
    srv = start_server(tmp_path_factory.mktemp("server"), *tiny_float32,
                       PHOTOFIELD_AI_MAX_BATCH_SIZE="16")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def heavy_industry() -> bytes:
    return (DATA / "heavy-industry.jpg").read_bytes()
