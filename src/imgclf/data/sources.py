"""Every data source becomes one `ImageSet`: sample keys, integer labels, ordered class names,
the split the layout gave (if any), a reader for the pixels, and the problems found on the way.

Sources: a folder of class folders; a folder of split folders (train/ val|valid|validation/ test/);
a CSV/TSV file or a pandas DataFrame with path and label columns; a .zip/.tar/.tar.gz holding any of
those (unpacked once into the cache, keyed by content hash); MNIST-style IDX files; numpy arrays.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgclf.data.archives import is_archive, unpack_archive
from imgclf.data.folders import data_root, scan_class_folders, scan_split_folders
from imgclf.data.idx import idx_files, scan_idx
from imgclf.data.imageset import ImageSet
from imgclf.data.layout import (
    describe,
    find_layout,
    visible_entries,
)
from imgclf.data.tables import TABLE_SUFFIXES, scan_table
from imgclf.errors import DataError, UsageError

logger = logging.getLogger(__name__)


def as_image_set(data: str | Path | ImageSet, **options: Any) -> ImageSet:
    """`data` itself when it is already scanned, else `scan_source(data, **options)`."""
    return data if isinstance(data, ImageSet) else scan_source(data, **options)


def training_table(tables: Sequence[Path]) -> Path | None:
    """The table that labels a folder's images: the only one, or the only one named for training
    (`Training_set.csv` beside `Testing_set.csv` and `sample_submission.csv`, as Kaggle ships them)."""
    if len(tables) == 1:
        return tables[0]
    named = [
        t
        for t in tables
        if re.search(r"train|label", t.name.lower())
        and not re.search(r"test|submission|sample", t.name.lower())
    ]
    return named[0] if len(named) == 1 else None


def scan_source(
    source: str | Path,
    *,
    path_col: str | None = None,
    label_col: str | None = None,
    images: str | Path | None = None,
    multi_label: bool | None = None,
    classes: Sequence[str] | None = None,
    splits: str | None = "auto",
) -> ImageSet:
    """Find every sample in a data source and the problems on the way (one code path for all).

    `splits` is the `--splits` option: "auto" finds split folders by structure and names (see
    `imgclf.data.layout`), "none" reads the sub-folders as classes, "train=a,val=b" names them.
    The layout found is logged in one line and kept in `ImageSet.description`.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(
            f"data not found: {path} (give a folder of class folders, a CSV, an archive or IDX files)"
        )
    display = str(path)
    if is_archive(path):
        path = unpack_archive(path)
    if path.is_dir():
        path = data_root(path)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(TABLE_SUFFIXES):
            image_set = scan_table(
                path,
                path_col=path_col,
                label_col=label_col,
                classes=classes,
                images=images,
                multi_label=multi_label,
            )
        elif re.search(r"-idx\d-ubyte(\.gz)?$", name):
            image_set = scan_idx([path], classes=classes)
        else:
            raise UsageError(f"{path} is not a folder, CSV/TSV, archive (.zip/.tar/.tar.gz) or IDX file")
    else:
        layout = find_layout(path, splits)
        tables = [p for p in visible_entries(path) if p.is_file() and p.name.lower().endswith(TABLE_SUFFIXES)]
        if layout.splits:
            image_set = scan_split_folders(layout, classes=classes)
        elif idx_files(path):
            image_set = scan_idx(idx_files(path), classes=classes)
        elif (table := training_table(tables)) is not None:  # a table beside the images indexes them
            if len(tables) > 1:
                others = ", ".join(p.name for p in tables if p != table)
                logger.info("%s: read %s, the training table (not %s)", path, table.name, others)
            image_set = scan_table(
                table,
                path_col=path_col,
                label_col=label_col,
                classes=classes,
                images=images,
                multi_label=multi_label,
            )
        elif any(p.is_dir() for p in visible_entries(path)):
            image_set = scan_class_folders(path, classes=classes)
            for warning in layout.warnings:
                logger.warning("%s", warning)
            image_set.description = describe(layout, {"all": len(image_set)})
        elif tables:
            names = ", ".join(p.name for p in tables)
            raise DataError(f"{path} holds several tables ({names}); give the one to use")
        else:
            raise DataError(f"{path} has no class sub-folders, split folders, CSV or IDX files")
    image_set.source = display
    return image_set
