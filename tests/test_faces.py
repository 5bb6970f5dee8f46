"""/faces: RetinaFace post-processing, alignment and the HTTP contract, on ONNX fakes."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from photofield_ai.api.faces import ERROR_HEADER
from photofield_ai.app import create_app
from photofield_ai.clip.wire import decode_embedding
from photofield_ai.config import Settings
from photofield_ai.faces import alignment, detection
from photofield_ai.runtime import OnnxSession
from photofield_ai.serving.loading import FaceModels, LoadedModels
from photofield_ai.testing.face_models import generate as generate_face_models
from photofield_ai.testing.server import serve_in_thread
from tests.conftest import (
    CPU,
    FlakySession,
    ServerProcess,
    assert_one_line_error,
    clip_model,
    run_cli,
    start_server,
    tiny_env,
)
from tests.face_fakes import (
    EXPECTED,
    FACES,
    encode_faces,
    expected_embedding,
    faces_env,
    photo_with_marker,
    write_detector,
    write_marker_detector,
    write_recognizer,
)
from tests.images import encode, jpeg, with_orientation
from tests.probes import parse_metric

FLAT = (200, 50, 10)  # a photo of one flat color: every aligned face crop has these means


# -- pure functions -----------------------------------------------------------------------------
def test_retinaface_constants_are_the_published_ones() -> None:
    """From RetinaFace's reference implementation (biubug6/Pytorch_Retinaface: cfg_mnet and
    detect.py), written out here rather than read back from the module under test."""
    assert detection.STEPS == (8, 16, 32)
    assert detection.MIN_SIZES == ((16, 32), (64, 128), (256, 512))
    assert detection.VARIANCES == (0.1, 0.2)
    assert detection.BGR_MEAN.tolist() == [104.0, 117.0, 123.0]
    assert detection.NMS_IOU == 0.4
    # ArcFace's 112×112 five-point template (insightface).
    assert alignment.ARCFACE_TEMPLATE.tolist() == [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]


def test_prior_grid() -> None:
    priors = detection.prior_boxes(640)
    assert priors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4)
    np.testing.assert_allclose(priors[0], [4 / 640, 4 / 640, 16 / 640, 16 / 640])
    np.testing.assert_allclose(priors[1], [4 / 640, 4 / 640, 32 / 640, 32 / 640])
    np.testing.assert_allclose(priors[-1], [624 / 640, 624 / 640, 512 / 640, 512 / 640])


def test_decoding_inverts_the_encoding_and_nms_and_threshold_apply() -> None:
    loc, conf, landmarks = encode_faces(FACES)
    box = detection.letterbox_geometry(640, 640)
    found = detection.postprocess(loc[0], conf[0], landmarks[0], box, (640, 640), 0.5, 100)
    np.testing.assert_allclose([f.box for f in found], [f.box for f in EXPECTED], atol=1e-3)
    assert [f.score for f in found] == pytest.approx([f.score for f in EXPECTED], abs=1e-6)
    np.testing.assert_allclose(
        np.array(found[0].landmarks), np.array(EXPECTED[0].landmarks), atol=1e-3
    )
    assert len(detection.postprocess(loc[0], conf[0], landmarks[0], box, (640, 640), 0.5, 1)) == 1
    low = detection.postprocess(loc[0], conf[0], landmarks[0], box, (640, 640), 0.2, 100)
    assert len(low) == 3  # the duplicate still goes (NMS), the weak face comes in
    assert detection.nms(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
    ) == [0, 2]


@pytest.mark.parametrize(("width", "height"), [(4000, 3000), (3000, 4000), (640, 480), (100, 50)])
def test_letterbox_for_portrait_and_landscape(width: int, height: int) -> None:
    image = Image.new("RGB", (width, height), FLAT)
    tensor, box = detection.detector_input(image)
    assert tensor.shape == (3, 640, 640)
    assert box.scale == pytest.approx(640 / max(width, height))
    assert (box.width, box.height) == (round(width * box.scale), round(height * box.scale))
    bgr = np.array(FLAT[::-1], np.float32) - detection.BGR_MEAN
    np.testing.assert_allclose(tensor[:, 0, 0], bgr, atol=1)  # photo at the top-left
    if box.width < 640:
        np.testing.assert_allclose(tensor[:, 0, 639], -detection.BGR_MEAN)  # black padding
    if box.height < 640:
        np.testing.assert_allclose(tensor[:, 639, 0], -detection.BGR_MEAN)


def test_alignment_of_the_template_is_the_identity() -> None:
    matrix = alignment.umeyama(alignment.ARCFACE_TEMPLATE, alignment.ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-9)


@pytest.mark.parametrize(
    ("angle", "scale", "shift"), [(30, 2.5, (400, 120)), (-75, 0.4, (3, 9)), (180, 1.0, (-50, 60))]
)
def test_alignment_recovers_a_similarity_transform(
    angle: float, scale: float, shift: tuple[float, float]
) -> None:
    theta = np.radians(angle)
    rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    landmarks = alignment.ARCFACE_TEMPLATE @ rotation.T + np.array(shift)
    matrix = alignment.umeyama(landmarks, alignment.ARCFACE_TEMPLATE)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, alignment.ARCFACE_TEMPLATE, atol=1e-6)


def test_aligned_crop_follows_the_landmarks() -> None:
    image = Image.new("RGB", (400, 300), (0, 0, 0))
    image.paste((255, 255, 255), (150, 100, 250, 220))  # the "face" is the white rectangle
    landmarks = alignment.ARCFACE_TEMPLATE * (100 / 112) + np.array([150, 100])
    crop = np.asarray(alignment.align_face(image, landmarks))
    assert crop.shape == (112, 112, 3)
    assert crop[56, 56].tolist() == [255, 255, 255]


def test_recognizer_input_is_rgb_in_minus_one_to_one() -> None:
    crop = alignment.recognizer_input(Image.new("RGB", (112, 112), (255, 0, 127)))
    assert crop.shape == (3, 112, 112)
    np.testing.assert_allclose(crop[:, 0, 0], [1.0, -1.0, -0.5 / 127.5], atol=1e-6)


# -- over HTTP, against a real server with the fakes -------------------------------------------
@pytest.fixture(scope="module")
def face_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("face-models")
    return write_detector(folder / "detector.onnx"), write_recognizer(folder / "recognizer.onnx")


@pytest.fixture(scope="module")
def face_server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_float32: tuple[Path, Path],
    face_models: tuple[Path, Path],
) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("faces"),
        *tiny_float32,
        **faces_env(*face_models),
    )
    yield srv
    srv.stop()


def post_faces(url: str, data: bytes, filename: str = "image") -> httpx.Response:
    return httpx.post(url + "/faces", files={"image": (filename, data)}, timeout=60)


def expected_boxes(width: int, height: int) -> list[list[float]]:
    scale = 640 / max(width, height)
    return [
        [
            min(v / scale, limit)
            for v, limit in zip(f.box, (width, height, width, height), strict=True)
        ]
        for f in EXPECTED
    ]


@pytest.mark.parametrize(("width", "height"), [(1600, 1200), (1200, 1600), (640, 640)])
def test_faces_contract(face_server: ServerProcess, width: int, height: int) -> None:
    r = post_faces(
        face_server.url, encode(Image.new("RGB", (width, height), FLAT), "JPEG", quality=95)
    )
    assert r.status_code == 200, r.text
    (image,) = r.json()["images"]
    assert (image["field"], image["filename"]) == ("image", "image")
    faces = image["faces"]
    assert len(faces) == 2
    for face, box in zip(faces, expected_boxes(width, height), strict=True):
        assert set(face) == {
            "bbox",
            "confidence",
            "landmarks",
            "embedding_f16_b64",
            "embedding_inv_norm_f16_uint16",
        }
        np.testing.assert_allclose(face["bbox"], box, atol=0.5)
        assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
        assert face["embedding_inv_norm_f16_uint16"] == 15360  # float16(1.0): L2-normalized
        embedding = decode_embedding(face["embedding_f16_b64"]).astype(np.float32)
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=2e-3)
        # RGB order and (x - 127.5) / 127.5, observed through the fake recognizer.
        np.testing.assert_allclose(embedding, expected_embedding(FLAT), atol=2e-2)
    assert [f["confidence"] for f in faces] == pytest.approx([0.95, 0.70], abs=1e-6)


@pytest.fixture(scope="module")
def marker_server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_float32: tuple[Path, Path],
    face_models: tuple[Path, Path],
) -> Iterator[ServerProcess]:
    """/faces with a detector that finds a red marker (face_fakes.write_marker_detector)."""
    folder = tmp_path_factory.mktemp("marker")
    srv = start_server(
        folder,
        *tiny_float32,
        **faces_env(write_marker_detector(folder / "marker.onnx"), face_models[1]),
    )
    yield srv
    srv.stop()


def best_face_center(url: str, data: bytes) -> tuple[float, float]:
    faces = post_faces(url, data).json()["images"][0]["faces"]
    assert faces, "the marker was not found"
    x1, y1, x2, y2 = faces[0]["bbox"]
    return (x1 + x2) / 2, (y1 + y2) / 2


@pytest.mark.parametrize(
    ("width", "height", "center"),
    [
        (1600, 1200, (400, 700)),
        (1200, 1600, (900, 300)),
        (640, 640, (320, 320)),
        (3000, 800, (2500, 500)),
    ],
)
def test_a_face_is_found_where_the_photo_has_it(
    marker_server: ServerProcess, width: int, height: int, center: tuple[int, int]
) -> None:
    """Through decode, letterbox, BGR minus means, the detector and the mapping back: the box
    lands on the marker (within one 8-px cell of the 640 input)."""
    image = photo_with_marker(width, height, center, radius=max(width, height) // 20)
    got = best_face_center(marker_server.url, encode(image, "JPEG", quality=95))
    cell = 8 * max(width, height) / 640
    assert abs(got[0] - center[0]) <= cell + 2 and abs(got[1] - center[1]) <= cell + 2, got


def test_exif_rotated_photo_gives_upright_boxes(marker_server: ServerProcess) -> None:
    """Stored turned with EXIF orientation 6 (as phones do): the box is where the marker is in
    the upright photo, not in the stored pixels."""
    upright = photo_with_marker(1200, 1600, (300, 1200), radius=80)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    got = best_face_center(marker_server.url, with_orientation(stored, 6))
    cell = 8 * 1600 / 640
    assert abs(got[0] - 300) <= cell + 2 and abs(got[1] - 1200) <= cell + 2, got


def test_the_detector_sees_bgr(marker_server: ServerProcess) -> None:
    """A blue marker is no face to a detector that wants red in its third (R) channel: a
    pipeline that fed RGB would find it."""
    image = photo_with_marker(1200, 900, (600, 450), radius=60)
    blue = Image.merge("RGB", image.split()[::-1])
    r = post_faces(marker_server.url, encode(blue, "JPEG", quality=95))
    assert r.status_code == 200 and r.json()["images"][0]["faces"] == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "image 0"),
        (b"definitely not an image" * 10, "not a recognized image"),
    ],
)
def test_unreadable_photos_get_200_with_no_faces(
    face_server: ServerProcess, data: bytes, reason: str
) -> None:
    r = post_faces(face_server.url, data)
    assert r.status_code == 200
    assert r.json() == {"images": [{"field": "image", "filename": "image", "faces": []}]}
    assert reason in r.headers["X-Photofield-AI-Faces-Error"]


def test_heic_from_a_phone_is_read(face_server: ServerProcess) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), FLAT).save(buf, "HEIF", quality=90)
    r = post_faces(face_server.url, buf.getvalue(), "IMG_0001.HEIC")
    assert r.status_code == 200 and len(r.json()["images"][0]["faces"]) == 2


def test_head_and_malformed_requests(face_server: ServerProcess) -> None:
    assert httpx.head(face_server.url + "/faces").status_code == 200
    r = httpx.post(face_server.url + "/faces", content=b"raw", headers={"Content-Type": "x/y"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]
    r = httpx.post(
        face_server.url + "/faces",
        content=b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 400


def test_eight_concurrent_12mp_photos(face_server: ServerProcess) -> None:
    photos = [jpeg(4000, 3000, seed=i) for i in range(2)]

    async def run() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> tuple[int, float]:
                started = time.monotonic()
                r = await client.post(
                    face_server.url + "/faces", files={"image": ("image", photos[i % 2])}
                )
                return r.status_code, time.monotonic() - started

            return list(await asyncio.gather(*(one(i) for i in range(8))))

    results = asyncio.run(run())
    print("8 concurrent 12-MP /faces requests, seconds:", [round(t, 2) for _, t in results])
    assert all(status == 200 for status, _ in results)
    assert max(t for _, t in results) < 15, "Photofield's client gives up after 30 s"


def test_face_metrics_count_what_a_request_did(face_server: ServerProcess) -> None:
    def read() -> dict[str, float]:
        text = httpx.get(face_server.url + "/metrics").text
        return {
            "recognized": parse_metric(
                text, "photofield_ai_items_processed_total", model="face_recognizer"
            ),
            "detected": parse_metric(
                text, "photofield_ai_items_processed_total", model="face_detector"
            ),
            "images": parse_metric(text, "photofield_ai_faces_per_image_count"),
            "faces": parse_metric(text, "photofield_ai_faces_per_image_sum"),
            "unreadable": parse_metric(
                text, "photofield_ai_face_images_unreadable_total", reason="ImageDecode"
            ),
        }

    before = read()
    r = post_faces(face_server.url, encode(Image.new("RGB", (300, 300), FLAT), "PNG"))
    assert len(r.json()["images"][0]["faces"]) == 2
    post_faces(face_server.url, b"not an image at all")
    after = read()
    assert {k: after[k] - before[k] for k in after} == {
        "recognized": 2,
        "detected": 1,
        "images": 1,
        "faces": 2,
        "unreadable": 1,
    }


# -- enabling, disabling, downloading -----------------------------------------------------------
def test_faces_disabled_or_unavailable_answer_503(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    srv = start_server(
        tmp_path,
        *tiny_float32,
        PHOTOFIELD_AI_FACES_ENABLED="",
        PHOTOFIELD_AI_FACE_DETECTOR_MODEL=str(tmp_path / "missing.onnx"),
    )
    try:
        assert httpx.head(srv.url + "/faces").status_code == 503
        r = post_faces(srv.url, jpeg(100, 100))
        assert r.status_code == 503 and "face models are not loaded" in r.json()["error"]
        assert "Faces unavailable" in srv.log()
        assert httpx.post(srv.url + "/text-embeddings", json={"texts": ["a"]}).status_code == 200
    finally:
        srv.stop()


def test_explicitly_enabled_faces_that_cannot_load_exit_cleanly(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    result = run_cli(
        env=tiny_env(
            tiny_float32,
            PHOTOFIELD_AI_FACES_ENABLED="1",
            PHOTOFIELD_AI_FACE_DETECTOR_MODEL=str(tmp_path / "none.onnx"),
            PHOTOFIELD_AI_PORT="18999",
        )
    )
    assert_one_line_error(result, "model file not found")


def test_real_face_models_opt_in(tmp_path: Path, tiny_float32: tuple[Path, Path]) -> None:
    """Opt-in: PHOTOFIELD_AI_TEST_FACE_MODELS=DIR holding retinaface_mv2.onnx and
    edgeface_xxs.onnx, and PHOTOFIELD_AI_TEST_FACE_PHOTO=a photo with one clear face. A rotated
    copy of the photo (pixels turned, no EXIF) must give the same embedding (cosine >= 0.98)."""
    folder, photo = (
        os.environ.get("PHOTOFIELD_AI_TEST_FACE_MODELS"),
        os.environ.get("PHOTOFIELD_AI_TEST_FACE_PHOTO"),
    )
    if not folder or not photo:
        pytest.skip("set PHOTOFIELD_AI_TEST_FACE_MODELS and PHOTOFIELD_AI_TEST_FACE_PHOTO")
    srv = start_server(
        tmp_path,
        *tiny_float32,
        **faces_env(Path(folder) / "retinaface_mv2.onnx", Path(folder) / "edgeface_xxs.onnx"),
    )
    try:
        original = Image.open(photo).convert("RGB")
        embeddings = []
        for image in (original, original.transpose(Image.Transpose.ROTATE_90)):
            faces = post_faces(srv.url, encode(image, "JPEG", quality=95)).json()["images"][0][
                "faces"
            ]
            assert faces, "no face found"
            best = max(faces, key=lambda f: f["confidence"])
            embeddings.append(decode_embedding(best["embedding_f16_b64"]).astype(np.float32))
        similarity = float(embeddings[0] @ embeddings[1])
        print(f"cosine between the photo and its rotated copy: {similarity:.4f}")
        assert similarity >= 0.98
    finally:
        srv.stop()


# -- answered in time ----------------------------------------------------------------------------
def test_faces_past_the_deadline_are_answered_in_time_with_no_faces(
    tiny_float32: tuple[Path, Path], face_models: tuple[Path, Path]
) -> None:
    """A detector slowed to 1.5 s per call and a 0.5 s deadline: the answer comes at the
    deadline, 200 with no faces and the reason (Photofield records one photo without faces
    instead of turning faces off for an hour), counted in a metric."""
    detector = FlakySession(face_models[0], CPU)
    detector.delay_s = 1.5
    models = LoadedModels(
        CPU,
        None,
        clip_model(tiny_float32[1], "textual"),
        FaceModels(detector, OnnxSession(face_models[1], CPU)),
    )
    app = create_app(Settings(faces_deadline_s=0.5), models)
    with serve_in_thread(app) as url:
        started = time.monotonic()
        r = post_faces(url, jpeg(1600, 1200))
        elapsed = time.monotonic() - started
        assert r.status_code == 200 and r.json()["images"][0]["faces"] == []
        assert "not analysed within 0.5 s" in r.headers[ERROR_HEADER]
        assert elapsed < 1.4, f"answered after {elapsed:.2f} s"
        metrics = httpx.get(url + "/metrics").text
        assert "photofield_ai_faces_deadline_exceeded_total 1.0" in metrics
        detector.delay_s = 0.0
        time.sleep(1.5)  # the abandoned call still holds the detector's one thread meanwhile
        again = post_faces(url, jpeg(1600, 1200))
        assert len(again.json()["images"][0]["faces"]) == 2 and ERROR_HEADER not in again.headers


def test_shape_true_face_models_load_and_serve(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    """The generated RetinaFace / EdgeFace-shaped models have the real files' inputs and
    outputs: they pass the start-up checks and /faces answers with their 'faces'."""
    detector, recognizer = generate_face_models(tmp_path / "models")
    session = OnnxSession(detector, CPU)
    assert session.input_shape == [1, 3, 640, 640]
    assert [list(o.shape) for o in session.outputs] == [
        [1, 16800, 4],
        [1, 16800, 2],
        [1, 16800, 10],
    ]
    srv = start_server(
        tmp_path,
        *tiny_float32,
        **faces_env(detector, recognizer),
    )
    try:
        r = post_faces(srv.url, jpeg(4000, 3000))
        assert r.status_code == 200
        faces = r.json()["images"][0]["faces"]
        assert 1 <= len(faces) <= 10
        assert all(decode_embedding(f["embedding_f16_b64"]).shape == (512,) for f in faces)
    finally:
        assert srv.stop() == 0
