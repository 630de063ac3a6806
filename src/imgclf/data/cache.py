"""The decoded-image cache: every image is decoded and resized once, then read back as uint8 rows.

Where the rows live (`--cache`):

- `ram`: a numpy array in memory; refused when it would exceed the memory budget.
- `disk`: a file in the cache folder (`decoded/<key>/`), memory-mapped; the operating system pages it
  in and out, so data larger than the memory trains at disk speed, never at decoding speed.
- `auto`: RAM when the images fit the budget (default: half of the available memory), else disk.
  Either way the decoded rows are also kept in the cache folder, so that the next run on the same
  data does not decode again.
- `none`: no cache; worker processes decode every batch (for data read once).

The key covers the file list, each file's size and modification time, the labels order, the
preprocessing spec's size, channels, resize policy and filter, the Pillow version (a new Pillow may
decode or resize a little differently, and the rows must be what prediction prepares today) and
CACHE_VERSION (raise it when imgclf's own decoding changes its output): change any of them and the
images are decoded again. Arrays given from Python are never written to disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from imgclf.data.headers import file_list_digest
from imgclf.data.imageset import ImageSet, Problem
from imgclf.data.loader import shared_rows
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import DataError
from imgclf.io import replace_dir_atomic
from imgclf.paths import cache_dir

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGES_FILE = "images.u8"
META_FILE = "meta.json"
MODES = ("auto", "ram", "disk", "none")


@dataclass
class CachePlan:
    """Where the decoded images of one data set will be kept, and how much room they take."""

    mode: str  # ram | disk | none
    needed_bytes: int
    budget_bytes: int
    key: str | None  # None: not kept on disk (arrays, --cache ram, or no room)

    @property
    def folder(self) -> Path | None:
        return cache_dir() / "decoded" / self.key if self.key else None


def memory_budget(budget_gb: float | None) -> int:
    """Bytes the RAM cache may take: `budget_gb`, or half of the memory available now."""
    from imgclf.data.loader import available_memory

    if budget_gb is not None:
        return int(budget_gb * 2**30)
    return available_memory() // 2


def check_ram_budget(needed: int, budget: int) -> None:
    """`--cache ram` refuses decoded images larger than its budget, with the way out."""
    if needed > budget:
        raise DataError(
            f"the decoded images need {needed / 2**30:.2f} GiB, over the RAM cache budget of "
            f"{budget / 2**30:.2f} GiB; use --cache disk (or auto), or raise --cache-budget"
        )


def cache_key(image_set: ImageSet, spec: PreprocessSpec) -> str | None:
    """A digest of what the decoded rows depend on; None for data that is not read from files."""
    files = file_list_digest(image_set)
    if files is None:
        return None
    shape = [spec.height, spec.width, spec.channels, spec.resize, spec.interpolation, CACHE_VERSION]
    shape.append(PIL.__version__)  # the decoder and the resize filters are Pillow's
    return hashlib.sha256(json.dumps([shape, files]).encode()).hexdigest()[:32]


def plan_cache(
    mode: str, image_set: ImageSet, spec: PreprocessSpec, budget_gb: float | None = None
) -> CachePlan:
    """Resolve `auto` and check the budget and the disk room."""
    if mode not in MODES:
        raise DataError(f"cache must be one of {', '.join(MODES)}, got {mode!r}")
    needed = len(image_set) * spec.height * spec.width * spec.channels
    budget = memory_budget(budget_gb)
    if mode == "none":
        return CachePlan("none", needed, budget, None)
    key = cache_key(image_set, spec) if mode != "ram" else None
    if mode == "ram":
        check_ram_budget(needed, budget)
    if mode == "auto":
        mode = "ram" if needed <= budget else "disk"
    if key is None and mode == "disk":
        mode = "ram" if needed <= budget else "none"  # arrays from Python: nothing to key a file on
    if key is not None and not _find_entry(key) and not _room_on_disk(needed):
        logger.warning("not enough free disk in %s for the decoded images; not keeping them", cache_dir())
        key = None
        if mode == "disk":
            mode = "none"
    return CachePlan(mode, needed, budget, key)


def _room_on_disk(needed: int) -> bool:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free > needed + (1 << 30)  # leave a GiB for everything else


def _find_entry(key: str) -> Path | None:
    folder = cache_dir() / "decoded" / key
    return folder if (folder / META_FILE).is_file() and (folder / IMAGES_FILE).is_file() else None


def load_cached(
    plan: CachePlan, count: int, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray, list[Problem]] | None:
    """The rows of an earlier run (images, ok mask, problems), or None when there are none."""
    if plan.key is None or (folder := _find_entry(plan.key)) is None:
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        shape = (count, spec.height, spec.width, spec.channels)
        if tuple(meta["shape"]) != shape or meta.get("version") != CACHE_VERSION:
            return None
        ok = np.asarray(meta["ok"], dtype=bool)
        problems = [Problem(**entry) for entry in meta["problems"]]
        if plan.mode == "disk":
            # copy-on-write: the loader may index it like any array; the file never changes
            images = np.memmap(folder / IMAGES_FILE, dtype=np.uint8, mode="c", shape=shape)
        else:
            images = np.fromfile(folder / IMAGES_FILE, dtype=np.uint8).reshape(shape)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring a damaged image cache entry %s (%s)", folder, error)
        return None
    with contextlib.suppress(OSError):  # last use, shown by `imgclf cache`; a read-only cache is fine
        os.utime(folder / META_FILE)
    return images, ok, problems


def allocate(plan: CachePlan, shape: tuple[int, ...]) -> tuple[np.ndarray, Path | None]:
    """An array to decode into: in RAM, or (disk mode) a memory-mapped file in a temporary folder."""
    if plan.mode != "disk" or plan.folder is None:
        return shared_rows(shape), None
    staging = plan.folder.parent / f".{plan.key}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return np.memmap(staging / IMAGES_FILE, dtype=np.uint8, mode="w+", shape=shape), staging


def store(
    plan: CachePlan,
    images: np.ndarray,
    ok: np.ndarray,
    problems: list[Problem],
    staging: Path | None,
) -> np.ndarray:
    """Keep freshly decoded rows in the cache folder (atomically) and return the array to train from."""
    if plan.key is None or plan.folder is None:
        return images
    meta = {
        "version": CACHE_VERSION,
        "shape": list(images.shape),
        "ok": ok.tolist(),
        "problems": [problem.__dict__ for problem in problems],
    }

    def fill(folder: Path) -> None:
        if staging is not None:
            images.flush()
            os.replace(staging / IMAGES_FILE, folder / IMAGES_FILE)
        else:
            images.tofile(folder / IMAGES_FILE)
        (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    try:
        replace_dir_atomic(plan.folder, fill)
    except OSError as error:  # a full or read-only disk costs the next run a decode, nothing more
        logger.warning("could not keep the decoded images in %s (%s)", plan.folder, error)
        return images
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if staging is not None:
        return np.memmap(plan.folder / IMAGES_FILE, dtype=np.uint8, mode="c", shape=images.shape)
    return images


# What the cache folder holds: decoded images, unpacked archives, bottleneck features.
CACHE_KINDS = {
    "decoded": "decoded images (--cache auto|disk)",
    "headers": "image sizes and modes of large data sets",
    "archives": "unpacked zip/tar data",
    "features": "bottleneck features (--head-only)",
}


@dataclass
class CacheEntry:
    kind: str
    name: str
    bytes: int
    last_used: float
    detail: str = ""


def list_cache() -> list[CacheEntry]:
    """Every entry imgclf keeps in its cache folder, with its size on disk and when it was last used."""
    entries = []
    for kind in CACHE_KINDS:
        folder = cache_dir() / kind
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir()):
            if item.name.startswith("."):
                continue
            files = [item] if item.is_file() else [f for f in item.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            last = max((f.stat().st_mtime for f in files), default=item.stat().st_mtime)
            detail = ""
            if kind == "decoded":
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    count, height, width, channels = json.loads((item / META_FILE).read_text())["shape"]
                    detail = f"{count:,} images {width}×{height}×{channels}"
            entries.append(CacheEntry(kind, item.name, size, last, detail))
    return entries


def clear_cache(kinds: list[str] | None = None) -> int:
    """Remove the cache's entries of `kinds` (default: all); returns the bytes freed."""
    freed = 0
    for kind in kinds or list(CACHE_KINDS):
        folder = cache_dir() / kind
        if folder.is_dir():
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder)
    return freed
