"""Shared fixtures: generated tiny CLIP models and real servers on loopback ports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from photofield_ai.families import Kind
from photofield_ai.runtime import OnnxSession
from photofield_ai.serving.loading import LoadedEmbeddingModel, load_embedding_model
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import ServerProcess, free_port, start_server

__all__ = ["ServerProcess", "free_port", "start_server"]

DATA = Path(__file__).parent / "data"
CPU = ["CPUExecutionProvider"]


class FlakySession(OnnxSession):
    """The real session, plus an injected failure or delay on demand."""

    fail_next = False
    delay_s = 0.0

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")
        return super().run(batch, output_names)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Poll `condition` until it holds: how a test waits for a state the code exposes (a queue
    depth, a batch running) instead of sleeping for a guessed time. The timeout only bounds a
    failure, so it is generous."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


async def wait_until_async(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """`wait_until` for a test running on the event loop."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


def clip_model(
    path: Path, kind: Kind, session_type: type[OnnxSession] = OnnxSession, threads: int = 0
) -> LoadedEmbeddingModel:
    """A CLIP model file loaded as the server loads it (CPU), to compute expected answers."""
    return load_embedding_model(
        path, CPU, kind, intra_op_threads=threads, session_type=session_type
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m photofield_ai ARGS` with only the given PHOTOFIELD_AI_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOFIELD_AI_")}
    return subprocess.run(
        [sys.executable, "-m", "photofield_ai", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


def server_errors(srv: ServerProcess) -> list[str]:
    """ERROR lines and tracebacks in a server's log: nothing a client sends may cause one."""
    return [line for line in srv.log().splitlines() if " ERROR " in line or "Traceback" in line]


def tiny_env(models: tuple[Path, Path], **extra: str) -> dict[str, str]:
    """PHOTOFIELD_AI_* for a CPU server on generated models, as `run_cli` and
    `Settings.from_env` take them; `extra` adds or overrides settings."""
    return {
        "PHOTOFIELD_AI_VISUAL_MODEL": str(models[0]),
        "PHOTOFIELD_AI_TEXTUAL_MODEL": str(models[1]),
        "PHOTOFIELD_AI_RUNTIME": "cpu",
        **extra,
    }


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_float32(models_dir: Path) -> tuple[Path, Path]:
    return generate("tiny", "float32", models_dir)


@pytest.fixture(scope="session")
def tiny_float16(models_dir: Path) -> tuple[Path, Path]:
    return generate("tiny", "float16", models_dir)


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    """A server on the tiny float32 models with batching on (shared by the API tests)."""
    srv = start_server(
        tmp_path_factory.mktemp("server"), *tiny_float32, PHOTOFIELD_AI_MAX_BATCH_SIZE="16"
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def heavy_industry() -> bytes:
    return (DATA / "heavy-industry.jpg").read_bytes()
