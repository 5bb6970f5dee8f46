"""Where model files come from: URLs (a local stand-in server), hf:// and paths."""

import hashlib
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from photofield_ai.fetch import ModelResolutionError, resolve_model
from tests.conftest import free_port
from tests.hub_standin import StandIn, serve_stand_in


@pytest.fixture()
def stand_in() -> Iterator[StandIn]:
    with serve_stand_in() as state:
        yield state


def test_local_path_is_used_as_is(tiny_float32: tuple[Path, Path], tmp_path: Path) -> None:
    assert resolve_model(str(tiny_float32[0]), tmp_path / "unused") == tiny_float32[0]
    assert not (tmp_path / "unused").exists()


def test_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="model file not found"):
        resolve_model(str(tmp_path / "nope.onnx"), tmp_path)


def test_url_is_downloaded_once_with_progress(stand_in: StandIn, tmp_path: Path) -> None:
    content = os.urandom(3_000_000)
    stand_in.files["/models/clip-test-visual-float32.onnx"] = content
    url = stand_in.url + "/models/clip-test-visual-float32.onnx"
    progress = io.StringIO()
    path = resolve_model(url, tmp_path / "models", progress)
    assert path == tmp_path / "models" / "clip-test-visual-float32.onnx"
    assert path.read_bytes() == content
    assert "100.0%" in progress.getvalue()
    assert resolve_model(url, tmp_path / "models", progress) == path
    assert stand_in.requests["GET /models/clip-test-visual-float32.onnx"] == 1
    # The file and the sha256 recorded when it was fetched (`download` checks it); no partials.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        path.name,
        path.name + ".sha256",
    ]
    recorded = (tmp_path / "models" / (path.name + ".sha256")).read_text().split()[0]
    assert recorded == hashlib.sha256(content).hexdigest()


def test_http_error_is_one_clear_line(stand_in: StandIn, tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="HTTP 404") as info:
        resolve_model(stand_in.url + "/missing.onnx", tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "missing.onnx").exists()


def test_interrupted_download_leaves_no_file(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.files["/short.onnx"] = os.urandom(1_000_000)
    stand_in.short.add("/short.onnx")
    with pytest.raises(ModelResolutionError):
        resolve_model(stand_in.url + "/short.onnx", tmp_path)
    assert list(tmp_path.iterdir()) == [], "no partial file under any name"


def test_unreachable_url(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="cannot download"):
        resolve_model(f"http://127.0.0.1:{free_port()}/model.onnx", tmp_path)


@pytest.mark.parametrize(
    "value",
    [
        "ftp://example.com/model.onnx",
        "s3://bucket/model.onnx",
        "hf://only-owner",
        "hf://owner/repo",
        "",
    ],
)
def test_invalid_values(value: str, tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError):
        resolve_model(value, tmp_path)


def _resolve_in_subprocess(value: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """huggingface_hub reads HF_* settings when imported, so each case gets a fresh process."""
    code = textwrap.dedent(f"""
        from pathlib import Path
        from photofield_ai.fetch import ModelResolutionError, resolve_model
        try:
            print(resolve_model({value!r}, Path("unused")).read_bytes().decode())
        except ModelResolutionError as exc:
            print("ERROR", exc)
    """)
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_hf_reference_downloads_through_huggingface_hub(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.files["/hf/mlunar/clip-variants/models/clip-x.onnx"] = b"model bytes"
    env = {
        "HF_ENDPOINT": stand_in.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    first = _resolve_in_subprocess("hf://mlunar/clip-variants/models/clip-x.onnx", env)
    assert first.stdout.strip() == "model bytes", first.stdout + first.stderr
    assert any(k.startswith("GET /mlunar/clip-variants/resolve/") for k in stand_in.requests)
    # Now offline: served from huggingface_hub's cache, no request made.
    before = sum(stand_in.requests.values())
    offline = _resolve_in_subprocess(
        "hf://mlunar/clip-variants/models/clip-x.onnx", {**env, "HF_HUB_OFFLINE": "1"}
    )
    assert offline.stdout.strip() == "model bytes", offline.stdout + offline.stderr
    assert sum(stand_in.requests.values()) == before
    # Offline and not cached: a clear error, not a traceback.
    missing = _resolve_in_subprocess(
        "hf://mlunar/clip-variants/models/other.onnx", {**env, "HF_HUB_OFFLINE": "1"}
    )
    assert missing.stdout.startswith("ERROR") and "not in the Hugging Face cache" in missing.stdout


def test_sha256_pinned_downloads(stand_in: StandIn, tmp_path: Path) -> None:
    import hashlib

    content = os.urandom(100_000)
    stand_in.files["/m/detector.onnx"] = content
    good = hashlib.sha256(content).hexdigest()
    url = stand_in.url + "/m/detector.onnx"
    with pytest.raises(ModelResolutionError, match="sha256") as info:
        resolve_model(f"{url}#sha256={'0' * 64}", tmp_path / "a")
    assert "expected " + "0" * 64 in str(info.value)
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").iterdir()) == []
    path = resolve_model(f"{url}#sha256={good}", tmp_path / "b")
    assert path.read_bytes() == content
    path.write_bytes(b"tampered")  # an existing file is checked too
    with pytest.raises(ModelResolutionError, match="sha256"):
        resolve_model(f"{url}#sha256={good}", tmp_path / "b")
    with pytest.raises(ModelResolutionError, match="64 hex digits"):
        resolve_model(f"{url}#sha256=abc", tmp_path / "c")
    local = tmp_path / "local.onnx"
    local.write_bytes(content)
    assert resolve_model(f"{local}#sha256={good}", tmp_path) == local
