"""Decoding: every Pillow mode to 1 or 3 channels, EXIF orientation, and failures that never crash."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.decode import (
    ImageDecodeError,
    decode_image,
    read_header,
    to_channels,
)
from imgclf.data.plain_png import decode_plain_png, plain_png_header
from imgclf.data.preprocess import PreprocessSpec, load_prepared, prepare_image, resize_image


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


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(
    picture: np.ndarray | Image.Image, early: tuple[bytes, ...] = (), late: tuple[bytes, ...] = (), **save
) -> bytes:
    """PNG bytes from Pillow, with extra chunks put right after IHDR (early) or before IEND (late)."""
    buffer = io.BytesIO()
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    image.save(buffer, format="PNG", **save)
    data = buffer.getvalue()
    data = data[:33] + b"".join(early) + data[33:]
    return data[:-12] + b"".join(late) + data[-12:]


def _png_cases() -> dict[str, tuple[bytes, bool, bool]]:
    """name → (PNG bytes, header read without Pillow, decoded without Pillow's file reader)."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (21, 13, 4), dtype=np.uint8)
    noise[:, :6] //= 4  # smooth and noisy parts, so that the encoder picks different row filters
    gray, rgb = noise[..., 0], noise[..., :3]
    colour_chunks = (
        _chunk(b"gAMA", struct.pack(">I", 45455)),
        _chunk(b"sRGB", b"\x00"),
        _chunk(b"cHRM", struct.pack(">8I", *range(31270, 31278))),
    )
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'  # noqa: E501
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = 6
    interlaced = bytearray(_png(gray))
    interlaced[28] = 1
    interlaced[29:33] = struct.pack(">I", zlib.crc32(bytes(interlaced[12:29])))
    bad_crc = bytearray(_png(rgb, early=colour_chunks[:1]))
    bad_crc[33 + 8] ^= 0xFF  # the gAMA value changes, its checksum does not
    whole = _png(rgb)
    return {
        "L": (_png(gray), True, True),
        "RGB": (_png(rgb), True, True),
        "RGBA": (_png(noise), True, True),
        "LA": (_png(noise[..., :2]), True, True),
        "RGB with gAMA, sRGB, cHRM": (_png(rgb, early=colour_chunks), True, True),
        "RGB with pHYs (dpi)": (_png(rgb, dpi=(300, 300)), True, True),
        "RGB in many IDAT chunks": (_png(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)), True, True),
        "L with tEXt": (_png(gray, early=(_chunk(b"tEXt", b"Comment\x00hello"),)), False, False),
        "L with late XMP orientation": (
            _png(gray, late=(_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp),)),
            True,
            False,
        ),
        "RGB with eXIf orientation": (_png(rgb, exif=exif.tobytes()), False, False),
        "L with transparency": (_png(gray, transparency=0), False, False),
        "P": (_png(Image.fromarray(rgb).convert("P")), False, False),
        "I;16": (_png(gray.astype(np.uint16) * 257), False, False),
        "1-bit": (_png(gray > 128), False, False),
        "interlaced": (bytes(interlaced), True, False),
        "broken gAMA checksum": (bytes(bad_crc), False, False),
        "cut in the pixel data": (whole[: len(whole) // 2], True, False),
    }


@pytest.mark.parametrize("name", list(_png_cases()))
def test_plain_pngs_read_and_decode_exactly_as_through_pillow(tmp_path: Path, name: str) -> None:
    """The plain-PNG shortcut gives Pillow's header and pixels, and is taken exactly for plain files."""
    data, header_plain, decode_plain = _png_cases()[name]
    path = tmp_path / "image.png"
    path.write_bytes(data)
    assert (plain_png_header(data) is not None) == header_plain
    assert (decode_plain_png(data) is not None) == decode_plain
    try:
        through_pillow = read_header(data)  # bytes never take the shortcut
    except ImageDecodeError:
        with pytest.raises(ImageDecodeError):
            read_header(path)
        return
    assert read_header(path) == through_pillow
    height, width = through_pillow.height, through_pillow.width
    for spec in (
        PreprocessSpec(height, width, 1),
        PreprocessSpec(height, width, 3),
        PreprocessSpec(8, 10, 3, interpolation="bicubic"),
    ):
        try:
            expected = prepare_image(decode_image(path, (spec.width, spec.height)), spec)  # the usual way
        except ImageDecodeError:
            with pytest.raises(ImageDecodeError):
                load_prepared(path, spec)
            continue
        prepared = load_prepared(path, spec)
        assert prepared.dtype == np.uint8 and prepared.shape == expected.shape
        np.testing.assert_array_equal(prepared, expected)


def test_damaged_plain_pngs_decode_as_through_pillow_or_are_reported() -> None:
    """3,000 seeded byte flips, insertions, deletions and cuts of plain PNGs: the shortcut never raises,
    never decodes what Pillow rejects, and where both decode, the pixels are the same."""
    rng = np.random.default_rng(7)
    originals = []
    for mode, size in (("L", (28, 28)), ("RGB", (31, 17)), ("RGBA", (16, 16)), ("LA", (9, 40))):
        pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(axis=2) if len(mode) == 1 else pixels, mode).save(buffer, "PNG")
        originals.append(buffer.getvalue())
    outcomes = {"both": 0, "neither": 0, "pillow only": 0}
    for _ in range(3000):
        data = bytearray(originals[rng.integers(len(originals))])
        where = int(rng.integers(len(data)))
        match int(rng.integers(4)):
            case 0:
                for spot in rng.integers(len(data), size=int(rng.integers(1, 4))):
                    data[spot] = int(rng.integers(256))
            case 1:
                del data[where:]
            case 2:
                data[where:where] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
            case _:
                del data[where : where + int(rng.integers(1, 9))]
        shortcut = decode_plain_png(bytes(data))
        try:
            usual = np.asarray(decode_image(bytes(data)))
        except ImageDecodeError:
            usual = None
        assert not (shortcut is not None and usual is None)
        if shortcut is not None:
            np.testing.assert_array_equal(np.asarray(shortcut), usual)
        outcomes["both" if shortcut is not None else "neither" if usual is None else "pillow only"] += 1
    assert min(outcomes.values()) > 0, outcomes  # every kind of outcome was exercised
