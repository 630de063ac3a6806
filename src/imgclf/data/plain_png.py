"""Plain PNGs, decoded the short way: an 8-bit PNG without a palette whose chunks change neither
the mode, the orientation nor the pixels (every MNIST file) has its header read from its first bytes
and its pixel data handed to Pillow's decoder directly, 2× faster than opening it through Pillow,
with the same pixels. Any other PNG goes the usual way (`imgclf.data.decode`)."""

from __future__ import annotations

import struct
import zlib

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The 8-bit PNG kinds without a palette (bit depth, colour type) and the mode Pillow opens each in.
PLAIN_PNG_MODES = {(8, 0): "L", (8, 2): "RGB", (8, 4): "LA", (8, 6): "RGBA"}
# Chunks (with the least length Pillow accepts) that change neither the mode, the orientation nor the
# pixels Pillow gives. A PNG made of these alone (with 8 bits per sample) is a "plain" PNG: imgclf reads
# its header from the first bytes and hands its pixel data to Pillow's decoder directly, which is 2× faster
# than opening the file through Pillow. Any other chunk (text, EXIF, transparency, colour profile,
# animation) sends the file the usual way.
PLAIN_PNG_CHUNKS = {b"IHDR": 13, b"IDAT": 0, b"IEND": 0, b"gAMA": 4, b"sRGB": 1, b"pHYs": 9, b"cHRM": 32}
PLAIN_PNG_HEADER_BYTES = 4096
# Deflate never expands data more than about 1032 times: pixel data shorter than its image's rows over
# this cannot fill them, and is refused before the image is allocated (68 bytes that claim 16,000 ×
# 16,000 pixels would otherwise cost a gigabyte first).
DEFLATE_MAX_RATIO = 1032
PLAIN_PNG_BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _plain_png_prefix(data: bytes | bytearray) -> tuple[int, int, str, int] | None:
    """(width, height, mode, offset of the first IDAT) of a plain PNG whose chunks up to that IDAT lie
    in `data`, with what Pillow's header reading checks (the chunk CRCs, the filter method); else None."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    position, size = 8, len(data)
    while position + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IDAT":
            width, height, depth, colour, _, filter_method = struct.unpack_from(">IIBBBB", data, 16)
            mode = PLAIN_PNG_MODES.get((depth, colour))
            if mode is None or filter_method != 0 or not 0 < width * height <= max_pixels():
                return None
            return width, height, mode, position
        least = PLAIN_PNG_CHUNKS.get(kind)
        end = position + 8 + length
        if least is None or length < least or end + 4 > size:
            return None
        if zlib.crc32(data[position + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return None  # Pillow reports the broken checksum
        position = end + 4
    return None


def plain_png_header(data: bytes | bytearray) -> tuple[int, int, str] | None:
    """(width, height, mode) of a plain PNG whose chunks up to the first IDAT lie in `data`, else None.

    Checks what Pillow's header reading checks (the chunk CRCs, the filter method), so for a plain PNG
    it gives what `read_header` gives through Pillow; for anything else (None) the caller asks Pillow.
    """
    prefix = _plain_png_prefix(data)
    return prefix[:3] if prefix is not None else None


def decode_plain_png(data: bytes | bytearray) -> Image.Image | None:
    """A plain, non-interlaced PNG (see PLAIN_PNG_CHUNKS) decoded by Pillow; None for any other data.

    The pixel data goes straight to Pillow's PNG ("zip") decoder, the one `decode_image` uses, so the
    pixels are the same; what is skipped is the per-file work around it (format probing, header parsing
    in Python, the EXIF and XMP look-up a plain PNG has no chunk for): with `read_bytes`, an MNIST
    digit's file is read and prepared in 22 µs instead of 45 µs.
    Damaged pixel data gives None, and `decode_image` then reports it as usual.
    """
    prefix = _plain_png_prefix(data[:PLAIN_PNG_HEADER_BYTES])
    if prefix is None or data[28] != 0:  # interlaced: Pillow
        return None
    width, height, mode, position = prefix
    pixels = []
    size = len(data)
    while position + 8 <= size:  # the rest of the chunks too (Pillow reads a late EXIF or XMP)
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind not in PLAIN_PNG_CHUNKS:
            return None
        if kind == b"IDAT":
            pixels.append(data[position + 8 : position + 8 + length])
        position += 12 + length
        if kind == b"IEND":
            break
    else:
        return None  # no IEND: truncated
    compressed = sum(len(part) for part in pixels)
    rows = height * (1 + width * PLAIN_PNG_BANDS[mode])
    if compressed * DEFLATE_MAX_RATIO < rows:
        from imgclf.data.decode import ImageDecodeError  # the module that reads every image

        raise ImageDecodeError(
            f"corrupt or truncated: {compressed:,} bytes of pixel data cannot fill {width}×{height} pixels"
        )
    try:
        return Image.frombytes(mode, (width, height), b"".join(pixels), "zip", mode)
    except (OSError, ValueError, MemoryError):
        return None


def max_pixels() -> int:
    """The largest image imgclf decodes (`imgclf.data.decode.MAX_PIXELS`)."""
    from imgclf.data.decode import MAX_PIXELS

    return MAX_PIXELS
