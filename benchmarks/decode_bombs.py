"""Decoder bombs: the time, the peak memory and the one-line answer of imgclf's decoding on hostile
files, each in a fresh process (so one's memory does not hide another's).

    python benchmarks/decode_bombs.py [--workdir DIR]

Files (generated): a 6320×6320 RGBA PNG of 0.2 MB; 68 bytes of PNG claiming 9,000×9,000 pixels; a
JPEG header claiming 60,000×60,000; a PNG header claiming as much; a 10,000-frame GIF; a TIFF of
20,001 one-pixel pages; an EPS file.
Each is read as training reads it (`load_prepared`) and as `serve` does (`decode_image` with its
default limits and formats). Then archive bombs, read as any command reads data (`scan_source`, with
a private cache folder): a zip of 20,000 members (16 KB images that deflate 100-fold), a zip
whose one member declares 1 GiB, and a .tar.gz, .tar.bz2 and .tar.xz whose first member declares
8 GiB (of zeros that are really there).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PROBE = r"""
import json, resource, sys, time
from imgclf.data.decode import UPLOAD_FORMATS, ImageDecodeError, decode_image, read_bytes
from imgclf.data.preprocess import PreprocessSpec, load_prepared, prepare_image
data, way = read_bytes(sys.argv[1]), sys.argv[2]
spec = PreprocessSpec(height=224, width=224, channels=3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    if way == "serve":
        image = decode_image(
            data, (224, 224), max_pixels=40_000_000, formats=UPLOAD_FORMATS, max_bytes=100 * 2**20
        )
        prepare_image(image, spec)
    else:
        load_prepared(data, spec)
    answer = "decoded"
except ImageDecodeError as error:
    answer = f"{type(error).__name__}: {error}"
seconds = time.perf_counter() - started
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "extra_mb": extra, "answer": answer}))
"""


ARCHIVE_PROBE = r"""
import json, os, resource, sys, time
from imgclf.data.sources import scan_source
from imgclf.errors import ImgclfError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    found = scan_source(sys.argv[1])
    answer = f"read: {len(found)} images"
except ImgclfError as error:
    answer = f"{type(error).__name__}: {error}"
seconds = time.perf_counter() - started
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "extra_mb": extra, "answer": answer}))
"""


def make_archives(folder: Path) -> dict[str, Path]:
    import zipfile

    files = {}
    bmp = io.BytesIO()  # 16 KB that deflate to about 100 bytes, as the bomb of the issue had them
    Image.new("RGB", (74, 74), (200, 30, 30)).save(bmp, format="BMP")
    many = folder / "members.zip"
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(20_000):
            archive.writestr(f"class_{i % 2}/{i:05d}.bmp", bmp.getvalue())
    files["zip of 20,000 members"] = many
    big = folder / "gigabyte.zip"
    with (
        zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("a/huge.png", "w", force_zip64=True) as member,
    ):
        block = b"\0" * 2**24
        for _ in range(64):  # 1 GiB of zeros, about 1 MB compressed
            member.write(block)
    files["zip member declaring 1 GiB"] = big
    for suffix, name in ((".tar.gz", "gz"), (".tar.bz2", "bz2"), (".tar.xz", "xz")):
        files[f"{suffix} whose first member declares 8 GiB"] = declared_tar(folder / f"huge{suffix}", name)
    return files


def declared_tar(path: Path, compression: str) -> Path:
    """A tar whose first member (`a/huge.png`) declares 8 GiB of zeros, compressed as one stream of
    the header then 128 identical streams of 64 MiB of zeros (gzip, bz2 and xz readers read
    concatenated streams): it unpacks to 8 GiB, and a reader that lists its members decompresses
    all of it to find the next header."""
    import bz2
    import gzip
    import lzma
    import tarfile

    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression]
    member = tarfile.TarInfo("a/huge.png")
    member.size = 8 * 2**30
    header = member.tobuf(format=tarfile.GNU_FORMAT)
    zeros = compress(b"\0" * 2**26)
    with path.open("wb") as handle:
        handle.write(compress(header))
        for _ in range(member.size // 2**26):
            handle.write(zeros)
        handle.write(compress(b"\0" * 1024))  # the end-of-archive blocks
    return path


def many_page_tiff(pages: int) -> bytes:
    """A little-endian TIFF of `pages` one-pixel grey pages, all sharing one pixel byte (written
    directly: Pillow's writer takes minutes for 100,000 pages)."""
    entries = ((256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 3, 1),
               (279, 4, 1))  # fmt: skip
    size = 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\0" + struct.pack("<I", 16) + b"\x80" + b"\0" * 7)  # the pixel at byte 8
    for page in range(pages):
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHII" if kind == 4 else "<HHIHH", tag, kind, 1, value, *([0] * (kind == 3)))
        out += struct.pack("<I", 16 + (page + 1) * size if page + 1 < pages else 0)
    return bytes(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_files(folder: Path) -> dict[str, Path]:
    files = {}
    rgba = np.zeros((6320, 6320, 4), np.uint8)
    rgba[..., 3] = 128
    rgba[::7, ::5, 0] = 255
    files["6320x6320 RGBA PNG"] = folder / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(files["6320x6320 RGBA PNG"])
    del rgba
    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)
    claim = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 10))
    files["68-byte PNG claiming 9000x9000"] = folder / "claim.png"
    files["68-byte PNG claiming 9000x9000"].write_bytes(claim + _chunk(b"IEND", b""))
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    claim = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 10))
    files["PNG header claiming 60000x60000"] = folder / "claim60k.png"
    files["PNG header claiming 60000x60000"].write_bytes(claim + _chunk(b"IEND", b""))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG")
    jpeg = bytearray(buffer.getvalue())
    start = jpeg.index(b"\xff\xc0") + 5  # SOF0: precision, then height and width
    jpeg[start : start + 4] = struct.pack(">HH", 60000, 60000)
    files["JPEG header claiming 60000x60000"] = folder / "claim.jpg"
    files["JPEG header claiming 60000x60000"].write_bytes(bytes(jpeg))
    frames = []
    for i in range(10_000):  # each frame differs (Pillow merges identical ones)
        frame = Image.new("L", (64, 64), 0)
        frame.putpixel((i % 64, i // 64 % 64), 255)
        frames.append(frame)
    files["10,000-frame GIF"] = folder / "frames.gif"
    frames[0].save(files["10,000-frame GIF"], save_all=True, append_images=frames[1:], duration=10)
    files["TIFF of 20,001 one-pixel pages"] = folder / "pages.tif"
    files["TIFF of 20,001 one-pixel pages"].write_bytes(many_page_tiff(20_001))
    files["EPS"] = folder / "file.eps"
    files["EPS"].write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-bombs-"))
    folder.mkdir(parents=True, exist_ok=True)
    print("| file | bytes | way | seconds | extra peak RSS | answer |\n|---|---|---|---|---|---|")
    for name, path in make_files(folder).items():
        for way in ("training", "serve"):
            command = [sys.executable, "-c", PROBE, str(path), way]
            out = subprocess.run(command, capture_output=True, text=True)
            size = f"{path.stat().st_size:,}"
            if out.returncode != 0:
                print(f"| {name} | {size} | {way} | – | – | crashed: {out.stderr[-200:]!r} |")
                continue
            row = json.loads(out.stdout)
            seconds, extra = f"{row['seconds']:.2f}", f"{row['extra_mb']:.0f} MB"
            print(f"| {name} | {size} | {way} | {seconds} | {extra} | {row['answer'][:110]} |")
    cache = folder / "cache"
    for name, path in make_archives(folder).items():
        command = [sys.executable, "-c", ARCHIVE_PROBE, str(path)]
        out = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "IMGCLF_CACHE_DIR": str(cache)}
        )
        size = f"{path.stat().st_size:,}"
        if out.returncode != 0:
            print(f"| {name} | {size} | any command | – | – | crashed: {out.stderr[-200:]!r} |")
            continue
        row = json.loads(out.stdout)
        print(
            f"| {name} | {size} | any command | {row['seconds']:.2f} | {row['extra_mb']:.0f} MB | "
            f"{row['answer'][:260]} |"
        )


if __name__ == "__main__":
    main()
