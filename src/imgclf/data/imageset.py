"""`ImageSet`: the samples of a data source (keys, integer labels, ordered class names, the split
the layout gave, a reader for the pixels, the problems found on the way), the readers, and in-memory
arrays as a source."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.decode import (
    ImageHeader,
    decode_image,
    read_header,
)
from imgclf.errors import DataError, UsageError

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Problem:
    """A file left out, and why. kind: non-image, corrupt, missing."""

    path: str
    kind: str
    reason: str


class FileReader:
    """Reads samples from files below a root folder (keys are relative paths or absolute ones)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)

    def location(self, key: str) -> str:
        return os.path.join(self._root, key)  # as root / key (an absolute key stays itself), 10x faster

    def open(self, key: str) -> Image.Image:
        return decode_image(self.location(key))

    def header(self, key: str) -> ImageHeader:
        return read_header(self.location(key))


class ArrayReader:
    """Reads samples from an in-memory array (N, H, W[, C]); keys are "array:<index>"."""

    def __init__(self, images: np.ndarray, name: str = "array") -> None:
        self.images = images
        self.name = name

    def location(self, key: str) -> str:
        return f"{self.name}[{key.split(':', 1)[1]}]"

    def open(self, key: str) -> Image.Image:
        return array_to_image(self.images[int(key.split(":", 1)[1])])

    def header(self, key: str) -> ImageHeader:
        image = self.images[int(key.split(":", 1)[1])]
        channels = 1 if image.ndim == 2 or image.shape[-1] == 1 else image.shape[-1]
        mode = "L" if channels == 1 else "RGB"
        return ImageHeader(image.shape[1], image.shape[0], mode, None, False)


def array_to_image(array: np.ndarray) -> Image.Image:
    """One image array (H, W), (H, W, 1|3|4) or (C, H, W) → Pillow image (uint8, or 0–1 floats)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if array.size and np.nanmax(array) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))  # L, RGB or RGBA by shape
    raise DataError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")


@dataclass
class ImageSet:
    """Samples of one data source, ready to split and load."""

    keys: list[str]
    labels: np.ndarray
    classes: list[str]
    reader: FileReader | ArrayReader
    layout: str
    source: str
    splits: list[str] | None = None
    headers: list[ImageHeader] | None = None
    problems: list[Problem] = field(default_factory=list)
    file_stats: list[str] | None = None  # "size mtime" per sample, filled once by file_list_digest
    description: str = ""  # what was found, in one line ("split folders training_set → train (8,000) …")
    # a multi-label table: samples × labels (0/1), the label names, and the summary line; `labels`
    # and `classes` then index each sample's label set ("fog|rain"; "(none)" for no label)
    targets: np.ndarray | None = None
    label_names: list[str] | None = None
    label_summary: str = ""

    @property
    def multi_label(self) -> bool:
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def output_names(self) -> list[str]:
        """What a model of this set answers: its classes, or for a multi-label set its labels."""
        return list(self.label_names) if self.label_names is not None else self.classes

    def set_targets(self) -> np.ndarray:
        """A multi-label set's label sets as 0/1 rows (label sets × labels, float32): row `labels[i]`
        is sample i's target vector, so loaders keep handing out one integer per sample."""
        assert self.targets is not None and self.label_names is not None
        table = np.zeros((len(self.classes), len(self.label_names)), np.float32)
        table[self.labels] = self.targets
        return table

    def location(self, index: int) -> str:
        return self.reader.location(self.keys[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """A new ImageSet with only these samples (same classes, reader and problems)."""
        indices = [int(i) for i in indices]
        return ImageSet(
            keys=[self.keys[i] for i in indices],
            labels=self.labels[indices],
            classes=self.classes,
            reader=self.reader,
            layout=self.layout,
            source=self.source,
            splits=[self.splits[i] for i in indices] if self.splits is not None else None,
            headers=[self.headers[i] for i in indices] if self.headers is not None else None,
            problems=self.problems,
            file_stats=[self.file_stats[i] for i in indices] if self.file_stats is not None else None,
            description=self.description,
            targets=self.targets[indices] if self.targets is not None else None,
            label_names=self.label_names,
            label_summary=self.label_summary,
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def fingerprint(self) -> str:
        """A short hash of the sample list and labels: the same data gives the same fingerprint."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.classes).encode())
        for key, label in zip(self.keys, self.labels.tolist()):
            digest.update(f"{key}\0{label}\n".encode())
        return digest.hexdigest()[:16]


def natural_key(name: str) -> list:
    """Sort "2" before "10" and "img2" before "img10"; otherwise alphabetical."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part
    ]


def sort_classes(names: set[str] | list[str]) -> list[str]:
    return sorted(set(names), key=natural_key)


def from_arrays(
    images: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    name: str = "array",
) -> ImageSet:
    """Images (N, H, W[, C]) plus labels (integers, or class names) as an ImageSet."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4):
        raise DataError(f"images must be an array (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    if class_names is not None and np.issubdtype(labels.dtype, np.integer):
        label_names = [str(class_names[int(i)]) for i in labels]
    else:
        label_names = [str(v) for v in labels.tolist()]
    names = order_classes(set(label_names), classes, name)
    if class_names is not None and classes is None:
        names = [str(c) for c in class_names if str(c) in set(label_names)]
    index_of = {n: i for i, n in enumerate(names)}
    selected = [i for i, n in enumerate(label_names) if n in index_of]
    keys = [f"array:{i}" for i in selected]
    mapped = np.asarray([index_of[label_names[i]] for i in selected], dtype=np.int64)
    return ImageSet(keys, mapped, names, ArrayReader(images, name), "arrays", name)


def order_classes(found: Sequence[str], classes: Sequence[str] | None, where: str) -> list[str]:
    if classes is None:
        return sort_classes(found)
    missing = [name for name in classes if name not in set(found)]
    if missing:
        raise DataError(f"class {missing[0]!r} given by --classes was not found in {where}")
    if len(set(classes)) != len(classes):
        raise UsageError("--classes lists a class twice")
    return list(classes)
