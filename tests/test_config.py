"""Settings: parsing, validation, and the documentation generated from their one definition."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from photofield_ai import reference
from photofield_ai.config import Settings, SettingsError
from photofield_ai.serving import layout

README = Path(__file__).parent.parent / "README.md"


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.models_dir, s.model_family) == (
        "0.0.0.0",
        8081,
        Path("models"),
        "clip",
    )
    # Device defaults are None here: serving.layout decides them.
    assert (s.max_batch_size, s.batch_timeout_ms, s.max_concurrent_batches) == (None, None, None)


def test_values_are_parsed_by_their_declared_type() -> None:
    s = Settings.from_env(
        {
            "PHOTOFIELD_AI_PORT": " 9000 ",
            "PHOTOFIELD_AI_BATCH_TIMEOUT_MS": "0.5",
            "PHOTOFIELD_AI_FACES_ENABLED": "yes",
            "PHOTOFIELD_AI_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
            "PHOTOFIELD_AI_RUNTIME": "CPU",
            "PHOTOFIELD_AI_MODELS_DIR": "/m",
            "PHOTOFIELD_AI_MAX_QUEUE": "",  # empty = unset
        }
    )
    assert (s.port, s.batch_timeout_ms, s.faces_enabled, s.runtime) == (9000, 0.5, True, "cpu")
    assert s.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (s.models_dir, s.max_queue) == (Path("/m"), 1024)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PHOTOFIELD_AI_PORT": "x"}, "PHOTOFIELD_AI_PORT must be a whole number, not 'x'"),
        ({"PHOTOFIELD_AI_PORT": "70000"}, "PHOTOFIELD_AI_PORT must be between 1 and 65535"),
        ({"PHOTOFIELD_AI_BATCH_TIMEOUT_MS": "nan"}, "must be a finite number"),
        ({"PHOTOFIELD_AI_QUEUE_TIMEOUT_MS": "-1"}, "must not be negative"),
        ({"PHOTOFIELD_AI_FACES_ENABLED": "maybe"}, "must be 1 or 0"),
        ({"PHOTOFIELD_AI_PROVIDERS": ","}, "must list at least one provider"),
        ({"PHOTOFIELD_AI_MAX_QUEUE": "0"}, "PHOTOFIELD_AI_MAX_QUEUE must be at least 1"),
        ({"PHOTOFIELD_AI_FACE_SCORE_THRESHOLD": "2"}, "between 0 and 1"),
        (
            {"PHOTOFIELD_AI_LOG_LEVEL": "loud"},
            "PHOTOFIELD_AI_LOG_LEVEL must be one of critical, error, warning, info, debug",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)


def test_every_setting_is_documented() -> None:
    for f in fields(Settings):
        assert f.metadata.get("help"), f"{f.name} has no help text"
        assert reference.default_text(f), f.name
    names = [row[0] for row in reference.rows()]
    assert names == [f"PHOTOFIELD_AI_{f.name.upper()}" for f in fields(Settings)]


def test_readme_settings_table_is_the_generated_one() -> None:
    """Run `python -m photofield_ai.reference --update-readme` after changing a setting."""
    text = README.read_text()
    start = text.index(reference.README_START) + len(reference.README_START)
    end = text.index(reference.README_END)
    assert text[start:end].strip() == reference.markdown_table()


def test_device_defaults_in_the_table_come_from_layout() -> None:
    table = reference.markdown_table()
    assert (
        f"{layout.CPU_MAX_BATCH_SIZE} on CPU, {layout.ACCELERATOR_MAX_BATCH_SIZE} on GPU" in table
    )


def test_command_help_lists_only_that_commands_settings() -> None:
    serve = reference.plain_text("serve")
    download = reference.plain_text("download")
    assert (
        "PHOTOFIELD_AI_MAX_BATCH_SIZE" in serve and "PHOTOFIELD_AI_MAX_BATCH_SIZE" not in download
    )
    assert "PHOTOFIELD_AI_MODELS_DIR" in serve and "PHOTOFIELD_AI_MODELS_DIR" in download


def test_default_face_model_urls_are_pinned() -> None:
    """A swapped or truncated download of the default face models is refused (the CLIP
    defaults have no published digest to pin; their downloads record one, see fetch.py)."""
    from photofield_ai.fetch import split_sha256

    for value in (Settings().face_detector_model, Settings().face_recognizer_model):
        location, digest = split_sha256(value)
        assert location.startswith("https://") and digest is not None and len(digest) == 64
