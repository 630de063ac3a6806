"""MNIST-style IDX files (`train-images-idx3-ubyte[.gz]` with its labels file) as a source."""

from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclf.data.imageset import ImageSet, from_arrays
from imgclf.errors import DataError


def idx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if re.search(r"-idx\d-ubyte(\.gz)?$", p.name))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    except (OSError, struct.error, EOFError) as error:
        raise DataError(f"{path.name} is not a valid IDX file: {error}") from error
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise DataError(f"{path.name} is not a valid IDX file (bad magic number)")
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path.name} is truncated: expected {int(np.prod(dims))} values, found {array.size}")
    return array.reshape(dims)


def scan_idx(files: list[Path], *, classes: Sequence[str] | None = None) -> ImageSet:
    """MNIST-style IDX pairs (train-images-idx3-ubyte + train-labels-idx1-ubyte, t10k-… for test)."""
    image_files = [p for p in files if "-images-" in p.name or "idx3" in p.name]
    if not image_files and len(files) == 1:
        raise DataError(f"{files[0].name} holds labels; give the images file or the folder")
    all_images: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    split_of: list[str] = []
    for image_file in image_files:
        prefix = (
            image_file.name.split("-images-")[0]
            if "-images-" in image_file.name
            else image_file.name.split("-")[0]
        )
        label_candidates = [p for p in image_file.parent.iterdir() if p.name.startswith(f"{prefix}-labels-")]
        if not label_candidates:
            raise DataError(f"no labels file ({prefix}-labels-idx1-ubyte) next to {image_file.name}")
        images = _read_idx(image_file)
        labels = _read_idx(label_candidates[0]).reshape(-1)
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise DataError(
                f"{image_file.name} and its labels do not match ({images.shape} vs {labels.shape})"
            )
        all_images.append(images)
        all_labels.append(labels)
        split = "test" if prefix.lower() in ("t10k", "test", "testing") else "train"
        split_of += [split] * len(labels)
    images = np.concatenate(all_images)
    raw = np.concatenate(all_labels).astype(np.int64)
    image_set = from_arrays(images, raw, class_names=None, classes=classes, name=image_files[0].name)
    image_set.layout = "idx"
    image_set.splits = split_of if len(set(split_of)) > 1 else None
    split_names = ["test" if p.name.lower().startswith(("t10k", "test")) else "train" for p in image_files]
    image_set.description = "IDX files " + ", ".join(
        f"{p.name} → {split}" for p, split in zip(image_files, split_names)
    )
    return image_set
