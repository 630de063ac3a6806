"""Decoding images with Pillow: any mode in, 'L' or 'RGB' out, EXIF orientation applied.

Every failure is an `ImageDecodeError` carrying a short reason, so callers can skip the file and
report it instead of crashing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.data.plain_png import (
    DEFLATE_MAX_RATIO,
    PLAIN_PNG_HEADER_BYTES,
    plain_png_header,
)

logger = logging.getLogger(__name__)

try:  # HEIC/HEIF photos from phones (pillow-heif); Pillow reads AVIF itself
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - a dependency; without it HEIF files are reported, not read
    pillow_heif = None

# Formats Pillow registers but cannot decode from a file by itself (they need an outside handler).
STUB_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "MPEG"})


def _image_extensions() -> frozenset[str]:
    """Every file extension of a format Pillow can open (JPEG, PNG, TIFF, WebP, AVIF, HEIF, TGA, JPEG 2000,
    ICO, PSD …), as its plugins register them."""
    Image.init()
    readable = {name for name in Image.OPEN if name not in STUB_FORMATS}
    return frozenset(ext.lower() for ext, name in Image.registered_extensions().items() if name in readable)


IMAGE_EXTENSIONS = _image_extensions() | {".heic", ".heif", ".hif", ".avif", ".avifs", ".jfif"}
# The first bytes of the common formats, for image files with no or another extension.
MAGIC_PREFIXES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# The most pixels the fast PNG path reads (anything larger goes to Pillow, whose own decompression
# bomb limit, left as Pillow sets it, then refuses it). Callers pass their own limits per call.
MAX_PIXELS = 16_000 * 16_000
# What a camera, a phone or a browser produces: the only formats `serve` and `predict` open, since
# their input comes from anyone (Pillow's other plug-ins parse rare formats nobody sends a classifier).
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
UPLOAD_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF and AVIF"
# Formats whose decoding runs an outside program (Pillow hands EPS and PostScript to Ghostscript):
# refused everywhere unless the user opts in with IMGCLF_ALLOW_EPS=1 (training and check only).
EXTERNAL_PROGRAM_FORMATS = frozenset({"EPS"})
ALLOW_EPS_VARIABLE = "IMGCLF_ALLOW_EPS"
# The first bytes of the formats a refusal names (PostScript text, EPS with a binary header, FITS).
REFUSED_MAGIC = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"SIMPLE  =", "FITS"))


class ImageDecodeError(Exception):
    """An image could not be read: corrupt, truncated, not an image, or too large."""


class ImageFormatError(ImageDecodeError):
    """An image in a format this use does not open (serve answers 415)."""


class DecodeTimeout(ImageDecodeError):
    """Decoding ran past its deadline (serve answers 413)."""


# A progressive JPEG's scans each walk every block of the image: 20,000 scans of 23 bytes each make
# a 0.7 MB file that takes 12 s to decode at 6000×6000. Encoders write about 10 (libjpeg's default
# script) and rarely more than a few dozen; libjpeg-turbo's own tools suggest a limit of 500.
MAX_JPEG_SCANS = 256
JPEG_SCAN_MARKER = b"\xff\xda"  # SOS; entropy-coded data never holds it (0xFF is stuffed there)


class _DeadlineBytes(io.BytesIO):
    """Bytes that refuse to be read past a deadline: Pillow's decoders read their input in blocks
    of 64 KiB, so decoding stops within one block of the deadline and the thread is free again."""

    def __init__(self, data: bytes | bytearray, deadline: float) -> None:
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        _check_deadline(self.deadline)
        return super().read(size)


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DecodeTimeout("decoding took too long (over its time budget)")


def training_formats() -> tuple[str, ...]:
    """The formats training, check and evaluation read: every one Pillow decodes by itself, except
    those that run an outside program, unless IMGCLF_ALLOW_EPS=1 says to."""
    return _training_formats(os.environ.get(ALLOW_EPS_VARIABLE, "") == "1")


@functools.lru_cache(maxsize=2)
def _training_formats(allowed: bool) -> tuple[str, ...]:
    Image.init()
    return tuple(
        name
        for name in Image.OPEN
        if name not in STUB_FORMATS and (allowed or name not in EXTERNAL_PROGRAM_FORMATS)
    )


def _refusal(head: bytes, formats: tuple[str, ...]) -> str | None:
    """The one-line reason a file of a known refused kind is not read, or None."""
    for magic, kind in REFUSED_MAGIC:
        if head.startswith(magic):
            if formats == UPLOAD_FORMATS:
                return f"a {kind} file: only {UPLOAD_FORMATS_TEXT} images are accepted here"
            if kind != "FITS":
                return (
                    f"a {kind} file: its decoding runs an outside program (Ghostscript), so imgclf does "
                    f"not read it; {ALLOW_EPS_VARIABLE}=1 allows it for training and check"
                )
    return None


class ImageHeader(NamedTuple):
    """What opening a file tells without decoding its pixels.

    A named tuple: header workers send tens of thousands back, and tuples pickle 4× faster.
    """

    width: int
    height: int
    mode: str
    format: str | None
    exif_rotated: bool

    @property
    def grayscale(self) -> bool:
        return self.mode in GRAYSCALE_MODES


def is_image_file(path: str | Path) -> bool:
    """True for file names with the extension of a format Pillow can open (hidden files never count)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def looks_like_image(path: str | Path) -> bool:
    """True when a file's first bytes are those of JPEG, PNG, GIF, BMP, TIFF, WebP, HEIF or AVIF: an
    image saved without its extension (or with another one) is still read."""
    try:
        head = read_bytes(path, 32)
    except OSError:
        return False
    if head.startswith(MAGIC_PREFIXES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def is_image(path: str | Path) -> bool:
    """An image file by its extension, or by its first bytes when the extension says nothing."""
    if is_image_file(path):
        return True
    return not os.path.basename(os.fspath(path)).startswith(".") and looks_like_image(path)


@contextlib.contextmanager
def pillow_warnings_logged(source: object) -> Iterator[None]:
    """Pillow's warnings about one file become one log line each that names the file; a decompression
    bomb warning becomes an error.

    In the main thread only: `warnings.catch_warnings` swaps the process's filters and hooks, and
    threads decoding at once (serve's requests, the header readers) would restore one another's and
    leave them changed. Elsewhere Pillow's warnings take Python's usual way, and the pixel limit
    holds without them (`_open` checks the size itself)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield
    if caught:
        name = os.fspath(source) if isinstance(source, (str, Path)) else "an image"
        for warning in caught:
            logger.warning("%s: %s", name, str(warning.message).splitlines()[0] if warning.message else "")


def _open(
    source: str | Path | bytes, formats: tuple[str, ...] | None = None, deadline: float | None = None
) -> Image.Image:
    """Open lazily with only `formats`' plug-ins (default: `training_formats()`); bytes read with a
    `deadline` (time.monotonic()) stop being readable past it."""
    if isinstance(source, (bytes, bytearray)):
        fp: Any = io.BytesIO(source) if deadline is None else _DeadlineBytes(source, deadline)
    else:
        fp = source
    formats = formats or training_formats()
    try:
        image = Image.open(fp, formats=list(formats))
        limit = Image.MAX_IMAGE_PIXELS
        if limit and image.width * image.height > limit:  # Pillow only warns up to twice its limit
            image.close()
            raise ImageDecodeError(f"image too large ({image.width * image.height:,} pixels, over {limit:,})")
        return image
    except ImageDecodeError:
        raise
    except Image.DecompressionBombWarning as error:
        raise ImageDecodeError(f"image too large ({error})") from error
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("image too large (over the pixel limit)") from error
    except UnidentifiedImageError as error:
        head = bytes(source[:16]) if isinstance(source, (bytes, bytearray)) else _head(source)
        reason = _refusal(head, formats)
        if reason is not None:
            raise ImageFormatError(reason) from error
        if formats == UPLOAD_FORMATS:
            raise ImageFormatError(f"not a {UPLOAD_FORMATS_TEXT} image") from error
        raise ImageDecodeError("not an image Pillow can read") from error
    except Exception as error:  # a plugin's parser on a damaged or unusual file: report, never crash
        raise ImageDecodeError(f"cannot open: {error or type(error).__name__}") from error


def _file_size(source: str | Path) -> int | None:
    try:
        return os.stat(source).st_size
    except (OSError, TypeError):
        return None


def _head(source: str | Path) -> bytes:
    try:
        return read_bytes(source, 16)
    except OSError:
        return b""


def stored_image(source: str | Path | bytes) -> str | Path | bytes:
    """The bytes of a Parquet row named `<shard>.parquet#<row>` (see `imgclf.data.parquet`); any other
    source as it is. Every reader of an image location goes through it, so a row reads as a file."""
    if isinstance(source, str) and "#" in source:
        from imgclf.data.parquet import is_row_location, row_bytes

        if is_row_location(source) and not os.path.exists(source):
            return row_bytes(source)
    return source


def read_bytes(path: str | Path, limit: int = -1) -> bytes:
    """A file's bytes (the first `limit` when given) through plain os calls: for small files, such as
    an MNIST digit's, 4 µs instead of the 7 µs of `open()`, which builds a buffered reader. A Parquet
    row's location (`stored_image`) gives the row's bytes."""
    stored = stored_image(path)
    if isinstance(stored, bytes):
        return stored if limit < 0 else stored[:limit]
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        if limit >= 0:
            return os.read(handle, limit)
        parts = []
        while part := os.read(handle, 1 << 20):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(handle)


def read_header(
    source: str | Path | bytes, name: object = None, formats: tuple[str, ...] | None = None
) -> ImageHeader:
    """Open an image lazily and report its size, mode and whether EXIF says to rotate it.

    Pillow's warnings are logged with `name` (default: the path); `formats`: see `decode_image`.
    """
    name, source = name or source, stored_image(source)
    if isinstance(source, (str, Path)) and os.fspath(source)[-4:].lower() == ".png":  # no second open
        try:
            plain = plain_png_header(read_bytes(source, PLAIN_PNG_HEADER_BYTES))
        except OSError:
            plain = None  # Pillow reports it
        if plain is not None:
            return ImageHeader(plain[0], plain[1], plain[2], "PNG", False)
    with pillow_warnings_logged(name or source):
        return _read_header(_open(source, formats))


def _read_header(image: Image.Image) -> ImageHeader:
    try:
        orientation = 1
        try:
            # The base getexif reads the EXIF/XMP the header holds; PNG's own would decode every pixel to
            # look for an eXIf chunk after them (decode_image still applies such a rare late one).
            orientation = Image.Image.getexif(image).get(0x0112, 1) or 1
        except Exception:  # a broken EXIF block does not make the image unusable
            orientation = 1
        width, height = image.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return ImageHeader(width, height, image.mode, image.format, orientation not in (1, None))
    finally:
        image.close()


def decode_image(
    source: str | Path | bytes,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    name: object = None,
    formats: tuple[str, ...] | None = None,
    max_bytes: int | None = None,
    deadline: float | None = None,
) -> Image.Image:
    """Fully decode an image, apply its EXIF orientation, and return it in its own mode.

    `draft_size` (width, height) lets JPEG decoding downscale in the DCT domain when the source is at
    least twice that size, which is much faster than decoding at full size and resizing.
    `max_pixels` refuses larger images from their header, before any pixel is decoded.
    `formats`: the Pillow formats opened (UPLOAD_FORMATS for anyone's input; default
    `training_formats()`); another format is an `ImageFormatError`. `max_bytes` refuses an image
    whose full-size decode would take more memory, except a JPEG that draft mode reduces under it.
    `deadline` (a time.monotonic() value; bytes only) stops decoding past it (`DecodeTimeout`).
    A progressive JPEG of more than MAX_JPEG_SCANS scans is refused before decoding.
    Every failure is an `ImageDecodeError`; Pillow's warnings are logged with `name` (default: the path).
    """
    with pillow_warnings_logged(name or source):
        return _decode(stored_image(source), draft_size, max_pixels, formats, max_bytes, deadline)


def decode_cost(
    source: str | Path | bytes,
    draft_size: tuple[int, int] | None = None,
    formats: tuple[str, ...] | None = None,
) -> tuple[int, int]:
    """(pixels, bytes) of an image from its header, decoding nothing: its pixels at full size, and
    the memory `decode_image` would take to decode it (a JPEG at the size draft mode reduces it to)."""
    with pillow_warnings_logged(source):
        image = _open(stored_image(source), formats)
        try:
            pixels = image.width * image.height
            if draft_size is not None and image.format == "JPEG":
                image.draft(image.mode, draft_size)
            return pixels, decoded_bytes(image)
        finally:
            image.close()


def decoded_bytes(image: Image.Image) -> int:
    """The memory the image's pixels take fully decoded, from its header."""
    per_band = 4 if image.mode in ("I", "F") else 2 if "16" in image.mode else 1
    return image.width * image.height * len(image.getbands()) * per_band


def _decode(
    source: str | Path | bytes,
    draft_size: tuple[int, int] | None,
    max_pixels: int | None,
    formats: tuple[str, ...] | None = None,
    max_bytes: int | None = None,
    deadline: float | None = None,
) -> Image.Image:
    image = _open(source, formats, deadline)
    if max_pixels is not None and image.width * image.height > max_pixels:
        image.close()
        raise ImageDecodeError(
            f"image too large: {image.width}×{image.height} pixels, over the limit of {max_pixels:,}"
        )
    if image.format == "PNG":  # at least one bit per pixel must come out of the deflated data
        size = len(source) if isinstance(source, (bytes, bytearray)) else _file_size(source)
        if size is not None and size * DEFLATE_MAX_RATIO * 8 < image.width * image.height:
            image.close()
            raise ImageDecodeError(
                f"corrupt or truncated: {size:,} bytes cannot hold {image.width}×{image.height} pixels"
            )
    if image.format in ("JPEG", "MPO") and "progressive" in image.info:
        scans = _jpeg_scans(source)
        if scans > MAX_JPEG_SCANS:
            image.close()
            raise ImageDecodeError(
                f"a progressive JPEG of {scans:,} scans, over the limit of {MAX_JPEG_SCANS} "
                "(each scan decodes the whole image again)"
            )
    try:
        if draft_size is not None and image.format == "JPEG":
            image.draft(image.mode, draft_size)
        if max_bytes is not None and decoded_bytes(image) > max_bytes:
            reason = (
                f"image too large to decode: {image.width}×{image.height} {image.mode} takes "
                f"{decoded_bytes(image) / 2**20:,.0f} MiB, over the limit of {max_bytes / 2**20:,.0f} MiB"
            )
            image.close()
            raise ImageDecodeError(reason)
        image.load()
        if draft_size is not None and image.format != "JPEG":
            reduced = reduce_for(image, draft_size)
            if reduced is not image:
                reduced.info, reduced.format = image.info, image.format  # EXIF orientation still applies
                image.close()
                image = reduced
        # the first frame of a multi-page file is decoded, and no other page is looked at (counting
        # them walks every page: 3 s for a 2 MB TIFF of 20,001 one-pixel pages, 157 s for 19 MB)
        _check_deadline(deadline)
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("image too large (over the pixel limit)") from error
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        reason = str(error) or type(error).__name__
        raise ImageDecodeError(f"corrupt or truncated: {reason}") from error
    except Exception as error:  # a plugin's decoder on an unusual file: report it, never crash
        raise ImageDecodeError(f"cannot decode: {error or type(error).__name__}") from error
    return image


def _jpeg_scans(source: str | Path | bytes) -> int:
    """How many scans (SOS markers) a JPEG holds, counted in its bytes (an EXIF thumbnail's count
    too: a few at most)."""
    if isinstance(source, (bytes, bytearray)):
        return source.count(JPEG_SCAN_MARKER)
    try:
        return read_bytes(source).count(JPEG_SCAN_MARKER)
    except OSError:
        return 0


def _over_black(image: Image.Image) -> Image.Image:
    """Transparent pixels become black (what the image shows over a dark background), in uint8 by
    Pillow's paste: no float copy of the image (a 6320×6320 RGBA PNG cost 1.4 GB that way)."""
    colour = "L" if image.mode == "LA" else "RGB"
    base = Image.new(colour, image.size, 0)
    base.paste(image.convert(colour), mask=image.getchannel("A"))
    return base


# Modes `Image.reduce` averages correctly (a palette cannot be averaged; 16-bit and float images are
# scaled to 8 bits first).
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK"})


def reduce_for(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An image at least twice `size` (width, height) on both sides, box-averaged by the largest whole
    factor that keeps it at least that size: the colour conversion and the resize that follow then
    work on a fraction of the pixels (JPEG gets the same from draft mode while decoding)."""
    factor = min(image.width // max(1, size[0]), image.height // max(1, size[1]))
    if factor < 2 or image.mode not in REDUCIBLE_MODES:
        return image
    if image.mode in ("RGBA", "LA"):
        return _reduce_in_strips(image, factor)
    return image.reduce(factor)


REDUCE_STRIP_BYTES = 8 * 2**20  # the most of a translucent image `_reduce_in_strips` copies at once


def _reduce_in_strips(image: Image.Image, factor: int) -> Image.Image:
    """`image.reduce(factor)` for RGBA and LA, a strip of rows at a time: Pillow premultiplies the
    alpha of the whole image into a copy before it reduces one (a 6320×6320 RGBA PNG cost 152 MiB
    more that way); strips of whole factors of rows give the same pixels."""
    bands = len(image.getbands())
    rows = max(1, REDUCE_STRIP_BYTES // (image.width * bands * factor))  # output rows per strip
    width, height = -(-image.width // factor), -(-image.height // factor)  # rounded up, as reduce does
    reduced = Image.new(image.mode, (width, height))
    for top in range(0, height, rows):
        box = (0, top * factor, image.width, min(image.height, (top + rows) * factor))
        reduced.paste(image.crop(box).reduce(factor), (0, top))
    return reduced


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale → 8-bit 'L' by their value range."""
    array = np.asarray(image)
    if image.mode == "F":
        array = array.astype(np.float64)
        scale = 255.0 if np.nanmax(array) <= 1.0 else 1.0
        array = np.nan_to_num(array * scale)
    else:
        array = array.astype(np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0  # 0..65535 → 0..255
    return Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    """CIELab → sRGB through Pillow's colour management (a plain mode conversion would copy the bands)."""
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.applyTransform(image, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))


def _to_l_or_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "P":  # the palette's transparency becomes alpha, as Pillow advises
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_bit_depth_to_l(image)
    if mode == "1":
        return image.convert("L")
    if mode == "La":  # premultiplied: over black, the grey band is the picture
        return image.getchannel(0)
    if mode == "RGBa":
        return Image.merge("RGB", image.split()[:3])
    if mode in ("LA", "RGBA"):
        return _over_black(image)
    if mode == "PA":
        return _over_black(image.convert("RGBA"))
    if mode == "LAB":
        return _lab_to_rgb(image)
    if mode not in ("L", "RGB"):  # CMYK, YCbCr, HSV, RGBX …: Pillow's own conversion
        return image.convert("RGB")
    return image


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3).

    Alpha is composited on black; palette images keep their colours; CIELab goes through colour
    management; CMYK and other colour spaces go through Pillow's own conversion; 16-bit and float
    images are scaled to 8 bits. A mode that cannot be converted is an `ImageDecodeError`.
    """
    try:
        image = _to_l_or_rgb(image)
        if channels == 1 and image.mode != "L":
            image = image.convert("L")
        elif channels == 3 and image.mode != "RGB":
            image = image.convert("RGB")
    except ImageDecodeError:
        raise
    except Exception as error:  # an unusual mode Pillow cannot convert: report the file, never crash
        raise ImageDecodeError(f"cannot convert its mode {image.mode}: {error}") from error
    return image
