import io
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from photofield_ai.clip import preprocess as pp
from photofield_ai.imaging import decode, errors
from tests.images import encode, jpeg, photo, png_bomb, psnr, with_orientation

S = 224


def test_geometry_matches_torchvision_resize_and_center_crop() -> None:
    # torchvision Resize(224) keeps the aspect: the long side is floor(224 * long / short).
    assert pp.resized_size(320, 480, S) == (224, 336)
    assert pp.resized_size(4000, 3000, S) == (298, 224)
    assert pp.resized_size(300, 300, S) == (224, 224)
    assert pp.resized_size(1, 20000, S) == (224, 4480000)
    # center_crop offsets: int(round((resized - size) / 2)), in the resized image's pixels.
    g = pp.crop_geometry(320, 480, S)
    assert (g.left, g.right) == (0, 320)
    assert g.top == pytest.approx(56 * 480 / 336) and g.bottom == pytest.approx(280 * 480 / 336)
    g = pp.crop_geometry(4000, 3000, S)
    assert g.left == pytest.approx(37 * 4000 / 298)  # round(37.0)


def test_dct_scale_never_goes_below_the_model_size() -> None:
    assert pp.choose_dct_scale(4000, 3000, S) == (1, 8)  # 375 px short side still covers 224
    assert pp.choose_dct_scale(1000, 800, S) == (1, 2)  # 1/4 would give 200 < 224
    assert pp.choose_dct_scale(256, 256, S) == (1, 1)
    for w, h in [(4000, 3000), (1000, 800), (500, 448), (449, 900), (7, 9)]:
        num, den = pp.choose_dct_scale(w, h, S)
        assert math.ceil(min(w, h) * num / den) >= min(S, min(w, h))


# OpenAI CLIP's normalization (openai/CLIP, clip/clip.py, `_transform`), written out here rather
# than read back from the module under test.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_normalize_uses_clip_mean_and_std() -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 128)
    out = pp.normalize(rgb)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    expected = [
        (v / 255 - m) / s
        for v, m, s in zip((255, 0, 128), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, strict=True)
    ]
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)


def reference_decode_and_crop(data: bytes, size: int) -> np.ndarray:
    """The slow, obviously-correct path, sharing no code with the one under test: Pillow's
    own EXIF transpose, a full decode, torchvision's Resize(size) (shorter side to `size`,
    longer floored) with bicubic resampling, and CenterCrop(size) with its rounding."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = image.size
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = image.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = round((rw - size) / 2.0), round((rh - size) / 2.0)
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


@pytest.mark.parametrize(
    "size",
    [
        # enlarged whole with OpenCV, then cropped: Photofield's 256-px thumbnails, a 1:1
        # short side, a small image
        (256, 192),
        (256, 171),
        (171, 256),
        (224, 300),
        (90, 60),
        # shrunk: crop box resized with Pillow, DCT-scaled from 1024×768 up
        (256, 256),
        (320, 480),
        (640, 427),
        (1024, 768),
        (2048, 1536),
        (4000, 3000),
    ],
)
def test_fast_path_matches_reference(size: tuple[int, int]) -> None:
    """libjpeg-turbo DCT scaling + crop-box resize (or whole enlarge + crop) against full
    decode + resize + crop."""
    assert decode.turbojpeg_available(), "libjpeg-turbo (libturbojpeg) must be installed"
    data = jpeg(*size)
    fast = pp.decode_and_crop(data, S)
    reference = reference_decode_and_crop(data, S)
    assert fast.shape == reference.shape == (S, S, 3)
    quality = psnr(fast, reference)
    print(f"PSNR fast vs reference {size[0]}x{size[1]}: {quality:.1f} dB")
    assert quality >= 35


def test_fast_path_average_psnr_over_photos() -> None:
    sizes = [(256, 192), (480, 320), (800, 1200), (1600, 1200), (3000, 4000), (4032, 3024)]
    scores = [
        min(100.0, psnr(pp.decode_and_crop(d, S), reference_decode_and_crop(d, S)))
        for d in (jpeg(w, h, seed=i) for i, (w, h) in enumerate(sizes))
    ]
    print(
        "PSNR per photo:",
        ", ".join(f"{s:.1f}" for s in scores),
        f"average {np.mean(scores):.1f} dB",
    )
    assert min(scores) >= 35 and np.mean(scores) >= 40


def test_real_photo_fast_path_is_near_exact(heavy_industry: bytes) -> None:
    # 320x480 needs no DCT scaling: the only difference is the crop-box resize.
    quality = psnr(
        pp.decode_and_crop(heavy_industry, S), reference_decode_and_crop(heavy_industry, S)
    )
    assert quality >= 45


def test_which_images_are_enlarged_whole() -> None:
    assert pp.enlarges(256, 192, S) and pp.enlarges(192, 256, S) and pp.enlarges(224, 224, S)
    assert not pp.enlarges(256, 256, S) and not pp.enlarges(4000, 3000, S)
    # A strip's enlarged whole would be many crops' worth of pixels: its crop box is resized.
    assert not pp.enlarges(100, 1000, S) and not pp.enlarges(1, 20000, S)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("stored_size", [(400, 300), (200, 150)], ids=["shrunk", "enlarged"])
def test_exif_orientation_gives_upright_pixels(
    orientation: int, stored_size: tuple[int, int]
) -> None:
    upright = photo(*stored_size)
    # Store the pixels so that applying `orientation` turns them upright again.
    inverse = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    stored = upright.transpose(inverse[orientation]) if orientation in inverse else upright
    data = with_orientation(stored, orientation)
    expected = reference_decode_and_crop(encode(upright, "JPEG", quality=95), S)
    got = pp.decode_and_crop(data, S)
    assert psnr(got, expected) >= 30, f"orientation {orientation} not applied"
    assert psnr(reference_decode_and_crop(data, S), expected) >= 30


def _formats() -> dict[str, bytes]:
    base = photo(300, 200)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    gif_frames = [photo(300, 200, seed=i).convert("P") for i in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, "GIF", save_all=True, append_images=gif_frames[1:])
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return {
        "png": encode(base, "PNG"),
        "png-16bit-gray": encode(
            Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257), "PNG"
        ),
        "png-rgba": encode(rgba, "PNG"),
        "png-la": encode(base.convert("LA"), "PNG"),
        "png-palette-transparency": encode(palette, "PNG"),
        "webp": encode(base, "WEBP", quality=90),
        "gif-animated": gif.getvalue(),
        "bmp": encode(base, "BMP"),
        "tiff": encode(base, "TIFF"),
        "jpeg-grayscale": encode(base.convert("L"), "JPEG", quality=90),
        "jpeg-cmyk": encode(base.convert("CMYK"), "JPEG", quality=90),
        "jpeg-progressive": encode(base, "JPEG", quality=90, progressive=True),
    }


@pytest.mark.parametrize("name", sorted(_formats()))
def test_every_supported_format(name: str) -> None:
    data = _formats()[name]
    out = pp.preprocess_image(data, S)
    assert out.shape == (3, S, S) and out.dtype == np.float32 and np.isfinite(out).all()
    # Same pixels as the reference path (Pillow decode, convert("RGB"), Resize, CenterCrop).
    assert psnr(pp.decode_and_crop(data, S), reference_decode_and_crop(data, S)) >= 35


def test_extreme_aspect_ratio_is_cropped_in_source_coordinates() -> None:
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20000, 1, 3), np.uint8))
    for data in (encode(strip, "PNG"), encode(strip, "JPEG")):
        out = pp.decode_and_crop(data, S)
        assert out.shape == (S, S, 3)
    assert pp.decode_and_crop(encode(photo(1, 1), "PNG"), S).shape == (S, S, 3)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG of 50000x50000 pixels that would decode; the file is tiny.
    bomb = png_bomb(50000)
    assert len(bomb) < 1_000_000
    with pytest.raises(errors.ImageTooLargeError):
        pp.preprocess_image(bomb, S, 100_000_000)
    with pytest.raises(errors.ImageTooLargeError):
        pp.preprocess_image(jpeg(400, 300), S, 1000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", errors.ImageDecodeError),
        (b"\x00\x01 random bytes" * 50, errors.ImageDecodeError),
        (b"hello, this is a text file named photo.jpg\n", errors.ImageDecodeError),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n", errors.ImageDecodeError),
    ],
)
def test_unreadable_bytes_raise_decode_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        pp.preprocess_image(data, S)


def test_truncated_images_raise_decode_errors() -> None:
    for data in (jpeg(640, 480), encode(photo(640, 480), "PNG")):
        with pytest.raises(errors.ImageDecodeError):
            pp.preprocess_image(data[: len(data) // 2], S)


def test_unsupported_but_real_format_is_named() -> None:
    ico = encode(photo(64, 64), "ICO")
    with pytest.raises(errors.UnsupportedImageFormatError, match="supported formats: JPEG"):
        pp.preprocess_image(ico, S)
