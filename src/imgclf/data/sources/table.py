"""A CSV/TSV table of image paths and labels, given itself or lying beside the images it names.

The path and label columns are found by their values and names (or given with --path-col and
--label-col); the images are found relative to the table, in a folder beside it, or by file name
(see `imgclf.data.tables`). In a folder with several tables, the one named for training is read
(`Training_set.csv` beside `Testing_set.csv` and `sample_submission.csv`, as Kaggle ships them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from imgclf.data.imageset import ImageSet
from imgclf.data.tables import TABLE_SUFFIXES, scan_table
from imgclf.errors import DataError

logger = logging.getLogger(__name__)

PRIORITY = 30
NOUN = "a CSV/TSV table"
EDITS = "table"


def training_table(tables: Sequence[Path]) -> Path | None:
    """The table that labels a folder's images: the only one, or the only one named for training."""
    if len(tables) == 1:
        return tables[0]
    named = [
        t
        for t in tables
        if re.search(r"train|label", t.name.lower())
        and not re.search(r"test|submission|sample", t.name.lower())
    ]
    return named[0] if len(named) == 1 else None


def recognise(query) -> bool:
    """A table file; or a folder whose tables index its images: one named for training, or tables
    and no sub-folders at all (then the user must say which)."""
    if query.path.is_file():
        return query.path.name.lower().endswith(TABLE_SUFFIXES)
    if not query.tables:
        return False
    return training_table(query.tables) is not None or not any(p.is_dir() for p in query.path.iterdir())


def scan(query) -> ImageSet:
    table = query.path
    if query.path.is_dir():
        table = training_table(query.tables)
        if table is None:
            names = ", ".join(p.name for p in query.tables)
            raise DataError(f"{query.path} holds several tables ({names}); give the one to use")
        if len(query.tables) > 1:
            others = ", ".join(p.name for p in query.tables if p != table)
            logger.info("%s: read %s, the training table (not %s)", query.path, table.name, others)
    return scan_table(table, **query.table_options)
