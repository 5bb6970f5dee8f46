import subprocess
import sys
from pathlib import Path

import pytest

from photofield_ai import __version__
from tests.conftest import assert_one_line_error, free_port, run_cli, tiny_env
from tests.hub_standin import serve_stand_in


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"photofield-ai {__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("photofield-ai")
    assert script.exists()
    assert subprocess.run([str(script), "--version"], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PHOTOFIELD_AI_PORT": "eighty"}, "PHOTOFIELD_AI_PORT must be a whole number"),
        ({"PHOTOFIELD_AI_RUNTIME": "gpu"}, "PHOTOFIELD_AI_RUNTIME must be one of all, cpu"),
        ({"PHOTOFIELD_AI_MAX_BATCH_SIZE": "0"}, "PHOTOFIELD_AI_MAX_BATCH_SIZE must be at least 1"),
        (
            {"PHOTOFIELD_AI_INTRA_OP_THREADS": "0"},
            "PHOTOFIELD_AI_INTRA_OP_THREADS must be at least 1",
        ),
        ({"PHOTOFIELD_AI_PROVIDERS": "NoSuchExecutionProvider"}, "available: "),
        ({"PHOTOFIELD_AI_VISUAL_MODEL": "/no/such/model.onnx"}, "model file not found"),
        ({"PHOTOFIELD_AI_VISUAL_MODEL": "ftp://example.com/m.onnx"}, "unsupported model location"),
    ],
)
def test_bad_settings_exit_with_one_line(env: dict[str, str], needle: str) -> None:
    assert_one_line_error(run_cli(env=env), needle)


def test_unloadable_and_swapped_models_exit_cleanly(
    tiny_float32: tuple[Path, Path], tmp_path: Path
) -> None:
    visual, textual = tiny_float32
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    result = run_cli(
        env={
            "PHOTOFIELD_AI_VISUAL_MODEL": str(corrupt),
            "PHOTOFIELD_AI_TEXTUAL_MODEL": str(textual),
            "PHOTOFIELD_AI_RUNTIME": "cpu",
        }
    )
    assert_one_line_error(result, "cannot load model", str(corrupt))
    swapped = run_cli(
        env={
            "PHOTOFIELD_AI_VISUAL_MODEL": str(textual),
            "PHOTOFIELD_AI_TEXTUAL_MODEL": str(visual),
            "PHOTOFIELD_AI_RUNTIME": "cpu",
        }
    )
    assert_one_line_error(swapped, "is a textual model")


def test_unreachable_model_url_exits_cleanly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/clip-visual.onnx"
    result = run_cli(
        env={"PHOTOFIELD_AI_VISUAL_MODEL": url, "PHOTOFIELD_AI_MODELS_DIR": str(tmp_path)}
    )
    assert_one_line_error(result, "cannot download", url)


def test_port_in_use_exits_cleanly(tiny_float32: tuple[Path, Path]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            env=tiny_env(tiny_float32, PHOTOFIELD_AI_HOST="127.0.0.1", PHOTOFIELD_AI_PORT=str(port))
        )
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_download_command_fetches_models_into_the_models_dir(
    tiny_float32: tuple[Path, Path], tmp_path: Path
) -> None:
    with serve_stand_in() as hub:
        hub.files["/m/visual.onnx"] = tiny_float32[0].read_bytes()
        hub.files["/m/textual.onnx"] = tiny_float32[1].read_bytes()
        env = {
            "PHOTOFIELD_AI_VISUAL_MODEL": hub.url + "/m/visual.onnx",
            "PHOTOFIELD_AI_TEXTUAL_MODEL": hub.url + "/m/textual.onnx",
            "PHOTOFIELD_AI_MODELS_DIR": str(tmp_path / "models"),
            "PHOTOFIELD_AI_RUNTIME": "cpu",
        }
        result = run_cli("download", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [
            str(tmp_path / "models" / "visual.onnx"),
            str(tmp_path / "models" / "textual.onnx"),
        ]
        again = run_cli("download", env=env)
        assert again.returncode == 0
        assert hub.requests["GET /m/visual.onnx"] == 1


def test_default_models_on_cpu_are_float32(tmp_path: Path) -> None:
    """With no model settings on a CPU, the float32 ViT-B/32 files are chosen (fastest here);
    the download fails offline, which shows which URL was chosen."""
    result = run_cli(
        "download",
        env={
            "PHOTOFIELD_AI_RUNTIME": "cpu",
            "PHOTOFIELD_AI_MODELS_DIR": str(tmp_path),
            "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}",
        },
    )
    assert "Default models: ViT-B/32 float32" in result.stderr
    assert (
        "https://huggingface.co/mlunar/clip-variants/resolve/main/models/"
        "clip-vit-base-patch32-visual-float32.onnx"
    ) in result.stderr
