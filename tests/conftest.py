"""Shared fixtures: generated tiny CLIP models and real servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from photofield_ai.testing.models import generate
from photofield_ai.testing.server import ServerProcess, free_port, start_server

__all__ = ["ServerProcess", "free_port", "start_server"]

DATA = Path(__file__).parent / "data"


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
