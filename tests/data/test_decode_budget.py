"""Decoding anyone's files: the formats opened by purpose, refusals with one-line reasons, and
budgets checked before pixels are allocated."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from imgclf.data import decode
from imgclf.data.decode import (
    UPLOAD_FORMATS,
    ImageDecodeError,
    ImageFormatError,
    decode_image,
    read_header,
    training_formats,
)
from imgclf.data.plain_png import decode_plain_png
from imgclf.data.preprocess import PreprocessSpec, load_prepared

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _claiming_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose few bytes of pixel data claim width × height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + _chunk(b"IEND", b"")
    )


def _encoded(format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(buffer, format=format)
    return buffer.getvalue()


def test_importing_imgclf_leaves_pillows_own_pixel_limit() -> None:
    code = (
        "from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
        "import imgclf.data.decode, imgclf.serve, imgclf.data.preprocess; "
        "print(Image.MAX_IMAGE_PIXELS == default)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
    )


def test_eps_and_postscript_are_refused_with_the_reason_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ImageFormatError, match=r"runs an outside program .* IMGCLF_ALLOW_EPS=1"):
        decode_image(EPS)
    with pytest.raises(ImageFormatError, match="runs an outside program"):
        read_header(EPS)
    assert "EPS" not in training_formats()
    monkeypatch.setenv("IMGCLF_ALLOW_EPS", "1")
    assert "EPS" in training_formats()  # the user's choice, for training and check
    with pytest.raises(ImageFormatError, match="only JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF and AVIF"):
        decode_image(EPS, formats=UPLOAD_FORMATS)  # anyone's input: never


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_what_cameras_and_browsers_make_is_read_from_anyone(format: str) -> None:
    assert decode_image(_encoded(format), formats=UPLOAD_FORMATS).size == (8, 8)


@pytest.mark.parametrize("format", ["TGA", "PCX", "SGI", "PPM"])
def test_other_formats_are_training_data_only(format: str) -> None:
    data = _encoded(format)
    assert decode_image(data).size == (8, 8)  # a data set may hold them
    with pytest.raises(ImageFormatError, match="not a JPEG, PNG, WebP"):
        decode_image(data, formats=UPLOAD_FORMATS)


def test_pixel_data_that_cannot_fill_its_image_is_refused_before_it_is_allocated() -> None:
    data = _claiming_png(9_000, 9_000)  # 81 M pixels, under Pillow's limit; 68 bytes
    assert len(data) < 100
    spec = PreprocessSpec(height=32, width=32, channels=3)
    tracemalloc.start()
    started = time.perf_counter()
    for attempt in (
        lambda: decode_plain_png(data),
        lambda: decode_image(data),
        lambda: load_prepared(data, spec),
    ):
        with pytest.raises(ImageDecodeError, match=r"cannot (fill|hold) 9000×9000"):
            attempt()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 0.5 and peak < 20 * 2**20, (seconds, peak)


def test_a_real_png_still_decodes_by_both_paths() -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    pixels = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert (np.asarray(decode_plain_png(buffer.getvalue())) == pixels).all()
    flat = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000, 3), np.uint8)).save(flat, format="PNG")  # compresses ~1000:1
    assert decode_image(flat.getvalue()).size == (3000, 3000)
    assert decode.DEFLATE_MAX_RATIO >= 1032


def test_a_decoded_size_budget_spares_jpegs_that_draft_mode_reduces() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3000, 3000, 3), dtype=np.uint8)  # 26 MiB decoded
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG", compress_level=1)
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=80)
    budget = 10 * 2**20
    with pytest.raises(ImageDecodeError, match=r"3000×3000 RGB takes 26 MiB, over the limit of 10 MiB"):
        decode_image(png.getvalue(), (224, 224), formats=UPLOAD_FORMATS, max_bytes=budget)
    reduced = decode_image(jpeg.getvalue(), (224, 224), formats=UPLOAD_FORMATS, max_bytes=budget)
    assert reduced.size == (375, 375)  # decoded at 1/8 in the DCT domain, under the budget


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_translucent_images_reduce_in_strips_to_the_same_pixels(mode: str, monkeypatch) -> None:
    """Pillow premultiplies the alpha of a whole RGBA image into a copy before reducing it; imgclf
    reduces strip by strip (a few rows here), and every pixel is the same."""
    monkeypatch.setattr(decode, "REDUCE_STRIP_BYTES", 20_000)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (1001, 777, len(mode)), dtype=np.uint8), mode)
    for size in ((224, 224), (100, 100), (30, 30)):
        factor = min(image.width // size[0], image.height // size[1])
        assert (np.asarray(decode.reduce_for(image, size)) == np.asarray(image.reduce(factor))).all()


def test_decoding_in_threads_leaves_the_warning_state_as_it_was(monkeypatch) -> None:
    """Serve and the header readers decode in threads: Pillow's warnings (here its decompression
    bomb warning, the pixel limit lowered) must neither leave the process's warning filters and
    hooks changed nor let an image over the limit through."""
    import threading
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warns over 1,000 pixels, refuses over 2,000
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, format="PNG")  # 1,600 pixels: the warning
    big = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, format="PNG")
    small = buffer.getvalue()
    filters, hook = list(warnings.filters), warnings.showwarning
    outcomes: list[str] = []
    lock = threading.Lock()

    def decode_many() -> None:
        for index in range(200):
            try:
                decode_image(big if index % 2 else small, name=f"upload {index}")
                answer = "big" if index % 2 else "small"
            except ImageDecodeError as error:
                answer = "refused" if "too large" in str(error) else f"other: {error}"
            with lock:
                outcomes.append(answer)

    threads = [threading.Thread(target=decode_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    decode_many()  # the main thread at the same time
    for thread in threads:
        thread.join()
    assert warnings.filters == filters and warnings.showwarning is hook
    assert sorted(set(outcomes)) == ["refused", "small"], sorted(set(outcomes))
    assert outcomes.count("refused") == 9 * 100


def _progressive_jpeg(scans: int, side: int = 256) -> bytes:
    """A progressive JPEG of a flat image with one of its scans repeated until it holds `scans`."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    first = data.index(b"\xff\xda")  # the scans run from the first SOS to the end-of-image marker
    last = data.rindex(b"\xff\xda")
    extra = max(0, scans - data.count(b"\xff\xda"))
    return data[:-2] + data[last:-2] * extra + b"\xff\xd9" if first < last else data


def test_a_progressive_jpeg_of_thousands_of_scans_is_refused_before_decoding(tmp_path) -> None:
    ordinary = _progressive_jpeg(10)
    assert decode_image(ordinary, formats=UPLOAD_FORMATS).size == (256, 256)  # libjpeg's own script
    bomb = _progressive_jpeg(20_000)  # each scan walks the whole image again
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    for source in (bomb, tmp_path / "bomb.jpg"):  # refused from its bytes, before any scan is decoded
        with pytest.raises(ImageDecodeError, match=r"JPEG of 20,\d+ scans, over the limit of 256"):
            decode_image(source, formats=UPLOAD_FORMATS)


def test_a_deadline_stops_decoding_within_one_block_of_input() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert decode_image(data, deadline=time.monotonic() + 600).size == (2000, 2000)
    with pytest.raises(decode.DecodeTimeout):
        decode_image(data, deadline=time.monotonic() - 1)
    with pytest.raises(decode.DecodeTimeout):  # past the deadline in the middle of the pixels
        decode_image(data, deadline=time.monotonic() + 0.002)


def test_a_multi_page_file_is_decoded_without_looking_at_its_other_pages(monkeypatch) -> None:
    from PIL import GifImagePlugin, TiffImagePlugin

    frames = [Image.new("L", (4, 4), i) for i in range(300)]
    seeks: list[tuple[str, int]] = []
    for plugin, kind in ((TiffImagePlugin.TiffImageFile, "TIFF"), (GifImagePlugin.GifImageFile, "GIF")):
        original = plugin._seek

        def counted(self, frame, *args, original=original, kind=kind):
            seeks.append((kind, frame))
            return original(self, frame, *args)

        monkeypatch.setattr(plugin, "_seek", counted)
        buffer = io.BytesIO()
        frames[0].save(buffer, format=kind, save_all=True, append_images=frames[1:])
        image = decode_image(buffer.getvalue(), formats=UPLOAD_FORMATS)
        assert image.getpixel((0, 0)) == 0
    assert all(frame == 0 for _, frame in seeks), seeks
