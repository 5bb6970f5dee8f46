"""Property tests for the decoders and the tokenizer, and schemathesis against /openapi.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from photofield_ai.clip import preprocess as pp
from photofield_ai.clip.tokenizer import CONTEXT_LENGTH, ClipTokenizer
from photofield_ai.imaging import errors
from tests.conftest import ServerProcess, start_server
from tests.face_fakes import fake_faces_env
from tests.images import encode, jpeg, photo

TOKENIZER = ClipTokenizer.from_package()
SEEDS = [
    jpeg(96, 64),
    encode(photo(96, 64), "PNG"),
    encode(photo(96, 64), "GIF"),
    encode(photo(96, 64), "WEBP"),
    encode(photo(96, 64), "TIFF"),
    encode(photo(96, 64), "BMP"),
]


def _decode_or_decoder_error(data: bytes) -> None:
    try:
        out = pp.preprocess_image(data, 64, 4_000_000)
    except errors.ImageDecodeError:
        return
    assert out.shape == (3, 64, 64) and out.dtype == np.float32


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_decoder_on_arbitrary_bytes_raises_only_its_own_error(data: bytes) -> None:
    _decode_or_decoder_error(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    st.integers(8, 20_000),
)
def test_decoder_on_mutated_images_raises_only_its_own_error(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    """Real images with bytes overwritten and the tail cut: deep inside the decoders."""
    data = bytearray(seed[:cut])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    _decode_or_decoder_error(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400))
def test_tokenizer_never_raises_and_keeps_its_frame(text: str) -> None:
    tokens = TOKENIZER.tokenize(text)
    assert tokens.shape == (CONTEXT_LENGTH,)
    ids = tokens.tolist()
    length = min(len(TOKENIZER.encode(text)) + 2, CONTEXT_LENGTH)
    assert ids[0] == TOKENIZER.sot
    assert ids[length - 1] == TOKENIZER.eot, "the end token closes the text"
    assert all(i == 0 for i in ids[length:]), "only padding after the end token"
    assert all(0 <= i < len(TOKENIZER.encoder) for i in ids)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=300, max_size=3000))
def test_tokenizer_cuts_long_texts_with_the_end_token_last(text: str) -> None:
    ids = [TOKENIZER.sot, *TOKENIZER.encode(text), TOKENIZER.eot]
    tokens = TOKENIZER.tokenize(text).tolist()
    if len(ids) > CONTEXT_LENGTH:
        assert tokens == [*ids[: CONTEXT_LENGTH - 1], TOKENIZER.eot]


def test_schemathesis_finds_no_server_errors_or_schema_violations(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    """Every check but `positive_data_acceptance`: schema-valid bytes that are not an image are
    rightly refused with 422/415, which that check counts as a failure. All models are loaded
    (faces on fakes), so every operation is reachable."""
    server = start_server(
        tmp_path,
        *tiny_float32,
        **fake_faces_env(tmp_path),
    )
    try:
        _run_schemathesis(server, tmp_path)
    finally:
        server.stop()


def _run_schemathesis(server: ServerProcess, tmp_path: Path) -> None:
    st_cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(st_cli), "run", server.url + "/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "40",
         "--seed", "20261126", "--no-color", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
