"""MNIST-style IDX files (train-images-idx3-ubyte[.gz] and their labels), or a folder holding them."""

from __future__ import annotations

import re

from imgclf.data.idx import idx_files, scan_idx
from imgclf.data.imageset import ImageSet

PRIORITY = 20
NOUN = "IDX files"
EDITS = None

IDX_NAME = re.compile(r"-idx\d-ubyte(\.gz)?$")


def recognise(query) -> bool:
    if query.path.is_file():
        return bool(IDX_NAME.search(query.path.name.lower()))
    return bool(idx_files(query.path))


def scan(query) -> ImageSet:
    files = [query.path] if query.path.is_file() else idx_files(query.path)
    return scan_idx(files, classes=query.classes)
