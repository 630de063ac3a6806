"""Decoding: every Pillow mode to 1 or 3 channels, EXIF orientation, and failures that never crash."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.decode import ImageDecodeError, decode_image, read_header, to_channels
from imgclf.data.preprocess import PreprocessSpec, prepare_image, resize_image


def _gradient(size: int = 16) -> np.ndarray:
    return np.tile(np.linspace(0, 255, size).astype(np.uint8), (size, 1))


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_converts_to_the_model_channels(tmp_path: Path, mode: str, channels: int) -> None:
    gray = _gradient()
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "I":
        image = Image.fromarray(gray.astype(np.int32) * 257, mode="I")
    elif mode == "F":
        image = Image.fromarray(gray.astype(np.float32) / 255.0, mode="F")
    elif mode == "LA":
        image = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (16, 16), 255)])
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)]), mode="RGBA")
    else:
        image = Image.fromarray(gray, mode="L").convert(mode)
    suffix = {"CMYK": ".jpg", "YCbCr": ".jpg", "F": ".tiff", "I": ".tiff", "I;16": ".png"}.get(mode, ".png")
    path = tmp_path / f"image{suffix}"
    image.save(path)
    decoded = decode_image(path)
    converted = to_channels(decoded, channels)
    assert converted.mode == ("L" if channels == 1 else "RGB")
    array = np.asarray(converted.convert("L"), dtype=np.float64)
    if mode == "1":  # 1-bit: only black and white survive, dark left and bright right
        assert array[:, 0].mean() == 0 and array[:, -1].mean() == 255
    else:  # the gradient survives: dark on the left, bright on the right
        assert array[:, 0].mean() < 30 and array[:, -1].mean() > 220, (
            mode,
            array[:, 0].mean(),
            array[:, -1].mean(),
        )


def test_alpha_composites_on_black() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    converted = np.asarray(to_channels(Image.fromarray(rgba, mode="RGBA"), 3))
    assert (converted[:2] == 200).all() and (converted[2:] == 0).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    image.info["transparency"] = 0
    converted = np.asarray(to_channels(image, 3))
    assert converted[0, 0].tolist() == [250, 10, 10]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path: Path, suffix: str) -> None:
    # A 20 wide × 10 high photo whose EXIF says "rotate 90° clockwise to display" (orientation 6).
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :10] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated{suffix}"
    image.save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {}))
    header = read_header(path)  # a PNG's eXIf chunk is read from the header, without decoding
    assert (header.width, header.height, header.exif_rotated) == (10, 20, True)
    shown = np.asarray(decode_image(path))
    assert shown.shape[:2] == (20, 10)
    assert shown[:10].mean() > 200 and shown[10:].mean() < 50  # the white half is now on top


def test_truncated_and_garbage_files_raise_decode_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    read_header(truncated)  # the header is intact; the damage shows only when decoding
    for path in (truncated, garbage, empty):
        with pytest.raises(ImageDecodeError):
            decode_image(path)


@pytest.mark.parametrize("policy", ["stretch", "crop", "pad"])
def test_resize_policies_give_the_exact_size(policy: str) -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    spec = PreprocessSpec(height=16, width=16, channels=3, resize=policy)
    resized = resize_image(image, spec)
    assert resized.size == (16, 16)
    array = np.asarray(resized)
    if policy == "pad":  # the wide image is letterboxed: black bars above and below
        assert array[0].max() == 0 and array[8].min() == 255
    else:
        assert array.min() == 255


def test_prepare_image_gives_uint8_hwc() -> None:
    spec = PreprocessSpec(height=8, width=12, channels=1)
    array = prepare_image(Image.new("RGB", (30, 30), (0, 255, 0)), spec)
    assert array.shape == (8, 12, 1) and array.dtype == np.uint8
