import platform
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from photofield_ai.runtime import ModelLoadError, OnnxSession, ProviderError, select_providers
from photofield_ai.runtime.session import DISABLED_OPTIMIZERS
from photofield_ai.runtime.threads import name_native_thread
from photofield_ai.testing.generate import generate
from tests.conftest import clip_model, start_server, tiny_env
from tests.images import jpeg

CPU = ["CPUExecutionProvider"]


def test_select_providers_follows_the_original_rules() -> None:
    available = ["CUDAExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", None, available) == CPU
    assert select_providers("cpu", ("CUDAExecutionProvider",), available) == CPU  # runtime wins
    assert select_providers(None, None, available) == ["CUDAExecutionProvider", *CPU]
    assert select_providers("all", ("CPUExecutionProvider",), available) == [
        "CUDAExecutionProvider",
        *CPU,
    ]
    assert select_providers(None, ("CPUExecutionProvider",), available) == CPU


def test_unknown_provider_is_rejected_with_the_available_list() -> None:
    with pytest.raises(ProviderError) as info:
        select_providers(
            None, ("TensorrtExecutionProvider", "CPUExecutionProvider"), ["CPUExecutionProvider"]
        )
    assert "TensorrtExecutionProvider" in str(info.value)
    assert "available: CPUExecutionProvider" in str(info.value)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_generated_models_load_and_adapt_dtypes(models_dir: Path, dtype: str) -> None:
    visual_path, textual_path = generate("tiny", dtype, models_dir)
    visual = clip_model(visual_path, "visual")
    textual = clip_model(textual_path, "textual")
    assert visual.encoder.spec.input_type == (
        "tensor(float)" if dtype == "float32" else "tensor(float16)"
    )
    assert textual.encoder.spec.input_type == "tensor(int32)"
    assert (visual.encoder.spec.input_size, textual.encoder.spec.input_size) == (224, 77)
    images = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    out = visual.run(images)  # float32 in, cast to float16 where the file wants it
    assert out.shape == (3, 512)
    assert out.dtype == (np.float32 if dtype == "float32" else np.float16)
    tokens = textual.encoder.example_input(2)  # int64 in, cast to int32
    assert textual.run(tokens).shape == (2, 512)
    # Batch rows are independent: row 1 alone equals row 1 in the batch.
    np.testing.assert_allclose(
        visual.run(images[1:2])[0].astype(np.float32),
        out[1].astype(np.float32),
        atol=2e-3 if dtype == "float16" else 1e-5,
    )


def test_float16_and_float32_variants_agree(models_dir: Path) -> None:
    f32 = clip_model(generate("tiny", "float32", models_dir)[0], "visual")
    f16 = clip_model(generate("tiny", "float16", models_dir)[0], "visual")
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    a, b = f32.run(x), f16.run(x).astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos > 0.99).all()


def test_quint8_variant_is_quantized_close_to_float32_and_serves(
    models_dir: Path, tmp_path: Path
) -> None:
    paths = generate("tiny", "quint8", models_dir)
    for path in paths:
        ops = {node.op_type for node in onnx.load(path).graph.node}
        assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"}, ops
    quant = clip_model(paths[0], "visual")
    full = clip_model(generate("tiny", "float32", models_dir)[0], "visual")
    x = np.random.default_rng(3).standard_normal((4, 3, 224, 224)).astype(np.float32)
    a, b = full.run(x).astype(np.float32), quant.run(x).astype(np.float32)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cosine > 0.95).all(), cosine
    srv = start_server(tmp_path, *paths)
    try:
        r = httpx.post(srv.url + "/text-embeddings", json={"texts": ["hawk"]})
        assert r.status_code == 200
        i = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", jpeg(320, 240))})
        assert i.status_code == 200
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("size", [224, 288, 336, 384, 448])
def test_visual_input_size_is_read_from_the_model(models_dir: Path, size: int) -> None:
    visual = clip_model(generate("tiny", "float32", models_dir, image_size=size)[0], "visual")
    assert visual.encoder.spec.input_size == size
    assert visual.run(visual.encoder.example_input(1)).shape == (1, 512)


def test_int64_token_input_is_supported(models_dir: Path, tmp_path: Path) -> None:
    model = onnx.load(generate("tiny", "float32", models_dir)[1])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    path = tmp_path / "textual-int64.onnx"
    onnx.save(model, path)
    textual = clip_model(path, "textual")
    assert textual.encoder.spec.input_type == "tensor(int64)"
    assert textual.run(textual.encoder.example_input(2)).shape == (2, 512)


def test_wrong_kind_and_bad_files_are_clear_errors(
    tiny_float32: tuple[Path, Path], tmp_path: Path
) -> None:
    visual, textual = tiny_float32
    with pytest.raises(ModelLoadError, match="is a textual model"):
        clip_model(textual, "visual")
    with pytest.raises(ModelLoadError, match="is a visual model"):
        clip_model(visual, "textual")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(visual.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="cannot load model"):
        OnnxSession(corrupt, CPU)
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxSession(tmp_path / "missing.onnx", CPU)
    # An ONNX file that is not CLIP-shaped: one input of shape [B, 10].
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 10])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "other.onnx")
    with pytest.raises(ModelLoadError, match="textual input must be"):
        clip_model(tmp_path / "other.onnx", "textual")
    with pytest.raises(ModelLoadError, match="visual input must be"):
        clip_model(tmp_path / "other.onnx", "visual")


def _float16_transpose_matmul(path: Path) -> None:
    """A float32 graph with the Transpose → MatMul chain on a 3-d dynamic tensor that CLIP's
    sequence-first attention has, converted to float16 with onnxconverter-common exactly as the
    clip-variants float16 files were."""
    from onnxconverter_common import float16

    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w"
    )
    g = helper.make_graph(
        [
            helper.make_node("Transpose", ["input"], ["t"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["t", "w"], ["output"]),
        ],
        "transpose_matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 77, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [77, "batch", 64])],
        initializer=[w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(float16.convert_float_to_float16(m, keep_io_types=False), path)


def _create_session_in_subprocess(path: Path, guarded: bool) -> subprocess.CompletedProcess[str]:
    kwargs = f"disabled_optimizers={list(DISABLED_OPTIMIZERS)!r}" if guarded else ""
    code = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        s = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"], {kwargs})
        print(s.run(None, {{"input": np.ones((2, 77, 64), np.float16)}})[0].shape)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _ort_version() -> tuple[int, int]:
    major, minor = ort.__version__.split(".")[:2]
    return int(major), int(minor)


def test_float16_crash_guard(tmp_path: Path) -> None:
    """Without the guard ONNX Runtime dies with SIGSEGV creating the session; with it, it runs."""
    path = tmp_path / "fp16-transpose-matmul.onnx"
    _float16_transpose_matmul(path)
    guarded = _create_session_in_subprocess(path, guarded=True)
    assert guarded.returncode == 0, guarded.stderr
    assert "(77, 2, 64)" in guarded.stdout
    if platform.machine() not in ("x86_64", "AMD64") or not (1, 23) <= _ort_version() <= (1, 32):
        pytest.skip(
            f"the crash is known on x86-64 with onnxruntime 1.23-1.32, "
            f"not {ort.__version__} on {platform.machine()}"
        )
    unguarded = _create_session_in_subprocess(path, guarded=False)
    assert unguarded.returncode == -11, (
        f"expected SIGSEGV without the guard, got {unguarded.returncode}: {unguarded.stderr[-500:]}"
    )


def test_loaded_model_survives_the_crashing_float16_pattern(tmp_path: Path) -> None:
    """The same crashing pattern inside a CLIP-shaped textual model, loaded through
    the server's loader in a subprocess (a crash there would kill pytest itself)."""
    path = tmp_path / "fp16-textual.onnx"
    from onnxconverter_common import float16

    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32), "w"
    )
    emb = numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((49408, 64)).astype(np.float32), "emb"
    )
    g = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input"], ["x"]),
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["t", "w"], ["m"]),
            helper.make_node("ReduceMean", ["m"], ["output"], axes=[0], keepdims=0),
        ],
        "textual",
        [helper.make_tensor_value_info("input", TensorProto.INT32, ["batch", 77])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 512])],
        initializer=[w, emb],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(float16.convert_float_to_float16(m, keep_io_types=False), path)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from photofield_ai.serving.loading import load_embedding_model
        s = load_embedding_model(Path({str(path)!r}), ["CPUExecutionProvider"], "textual")
        print(s.run(s.encoder.example_input(3)).shape)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "(3, 512)" in result.stdout


@pytest.mark.parametrize(
    ("env", "threads", "alone_threads"),
    [
        # The adaptive layout (default): single-threaded sessions for a busy queue, and a
        # second session with ONNX Runtime's default threads (0) for a batch alone — the
        # visual one's threads spin during its calls (serving.layout says why).
        ({}, (1, 1), (0, 0)),
        ({"PHOTOFIELD_AI_ADAPTIVE_LAYOUT": "0"}, (1, 0), (None, None)),
        ({"PHOTOFIELD_AI_INTRA_OP_THREADS": "2"}, (2, 2), (None, None)),
    ],
)
def test_thread_settings_reach_the_sessions(
    tiny_float32: tuple[Path, Path],
    env: dict[str, str],
    threads: tuple[int, int],
    alone_threads: tuple[int | None, int | None],
) -> None:
    from photofield_ai.config import Settings
    from photofield_ai.runtime.cpus import usable_cpus
    from photofield_ai.serving.loading import load_models

    if usable_cpus() < 2 and not env:
        pytest.skip("the adaptive layout needs two CPUs")
    models = load_models(
        Settings.from_env(tiny_env(tiny_float32, PHOTOFIELD_AI_FACES_ENABLED="0", **env))
    )
    for loaded, want, want_alone in zip(
        (models.visual, models.textual), threads, alone_threads, strict=True
    ):
        assert loaded is not None and isinstance(loaded.session, OnnxSession)
        options = loaded.session.session.get_session_options()
        assert options.intra_op_num_threads == want
        assert _spinning(options) == ("0", "")  # never: it would burn the other batches' cores
        if want_alone is None:
            assert loaded.alone is None
        else:
            assert isinstance(loaded.alone, OnnxSession)
            options = loaded.alone.session.get_session_options()
            assert options.intra_op_num_threads == want_alone
            # Both every-core sessions spin during their calls and stop when a call returns.
            assert _spinning(options) == ("1", "1")


def test_a_session_may_spin_during_its_calls_only(tiny_float32: tuple[Path, Path]) -> None:
    """The benchmarks' bare calls try threads that spin while a call runs and stop when it
    returns; the option survives an idle unload and the reload after it."""
    session = OnnxSession(tiny_float32[0], CPU, 0, spin_during_calls=True)
    assert _spinning(session.session.get_session_options()) == ("1", "1")
    assert session.unload_if_idle(0.0) and not session.loaded
    assert _spinning(session.session.get_session_options()) == ("1", "1")


def _spinning(options: ort.SessionOptions) -> tuple[str, str]:
    """(allow_spinning, force_spinning_stop) as the session was configured ("" when unset)."""
    entries = []
    for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
        try:
            entries.append(options.get_session_config_entry(key))
        except Exception:  # onnxruntime raises when the entry was never set
            entries.append("")
    return entries[0], entries[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names via prctl")
def test_a_thread_names_itself_for_the_os_in_15_characters() -> None:
    """`top -H` and per-thread CPU accounting show what each thread is for."""
    seen: list[str] = []

    def run() -> None:
        name_native_thread("visual-inference_0")
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
            seen.append(comm.read().strip())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == ["visual-inferenc"]
