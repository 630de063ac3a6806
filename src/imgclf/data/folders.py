"""Folders as a source: a folder of class folders, or split folders holding class folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclf.data.decode import (
    is_image,
)
from imgclf.data.imageset import FileReader, ImageSet, Problem, order_classes
from imgclf.data.layout import (
    IGNORED_FOLDERS,
    FolderLayout,
    describe,
    sub_folders,
    unwrap,
    visible_entries,
)
from imgclf.data.tables import TABLE_SUFFIXES


def data_root(folder: Path) -> Path:
    """Descend through single wrapper folders (archive/mnist_png/…, dataset/flowers/…) to where the
    data starts; a lone folder of images (one class) stays as it is, for a clear error."""
    inner = unwrap(folder)
    return inner if inner == folder or sub_folders(inner) else folder


def _walk_images(folder: Path, root: Path, problems: list[Problem]) -> list[str]:
    """Image files below `folder` (recursively), as keys relative to `root`; others are counted."""
    keys: list[str] = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in IGNORED_FOLDERS)
        relative = Path(directory).relative_to(root).as_posix()  # once per folder: string joins below
        prefix = "" if relative == "." else relative + "/"
        for name in sorted(files):
            key = prefix + name
            if is_image(os.path.join(directory, name)):
                keys.append(key)
            else:
                problems.append(Problem(key, "non-image", "not an image file (skipped)"))
    return keys


def _class_dirs(folder: Path) -> dict[str, Path]:
    return sub_folders(folder)


def scan_class_folders(folder: Path, *, classes: Sequence[str] | None = None) -> ImageSet:
    """A folder whose sub-folders are classes; images may sit deeper inside a class folder."""
    dirs = _class_dirs(folder)
    names = order_classes(list(dirs), classes, str(folder))
    problems: list[Problem] = [
        Problem(p.name, "non-image", "not an image file (skipped)")
        for p in visible_entries(folder)
        if p.is_file() and not p.name.lower().endswith(TABLE_SUFFIXES)
    ]
    keys: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        found = _walk_images(dirs[name], folder, problems)
        keys += found
        labels += [index] * len(found)
    return ImageSet(
        keys,
        np.asarray(labels, dtype=np.int64),
        names,
        FileReader(folder),
        "class-folders",
        str(folder),
        problems=problems,
    )


def scan_split_folders(layout: FolderLayout, *, classes: Sequence[str] | None = None) -> ImageSet:
    """Split folders (train, and val or test), each holding the same class folders."""
    root, splits = layout.root, layout.splits
    found: set[str] = set()
    for split_dir in splits.values():
        found |= set(_class_dirs(split_dir))
    names = order_classes(list(found), classes, str(root))
    index_of = {name: i for i, name in enumerate(names)}
    problems: list[Problem] = []
    keys: list[str] = []
    labels: list[int] = []
    split_of: list[str] = []
    for split in ("train", "val", "test"):
        if split not in splits:
            continue
        for name, class_dir in _class_dirs(splits[split]).items():
            if name not in index_of:
                continue
            found_keys = _walk_images(class_dir, root, problems)
            keys += found_keys
            labels += [index_of[name]] * len(found_keys)
            split_of += [split] * len(found_keys)
    counts = {split: split_of.count(split) for split in splits}
    return ImageSet(
        keys,
        np.asarray(labels, dtype=np.int64),
        names,
        FileReader(root),
        "split-folders",
        str(root),
        splits=split_of,
        problems=problems,
        description=describe(layout, counts),
    )
