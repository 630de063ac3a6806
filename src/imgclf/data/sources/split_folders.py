"""A folder of split folders (train/ val/ test/, training_set/ test_set/ …) that hold the same class folders.

Split folders are found by structure and named by their words (see `imgclf.data.layout`);
`--splits none` reads the sub-folders as classes and `--splits train=a,val=b` names them.
"""

from __future__ import annotations

from imgclf.data.folders import scan_split_folders
from imgclf.data.imageset import ImageSet
from imgclf.data.layout import parse_splits_option
from imgclf.data.tables import TABLE_SUFFIXES

PRIORITY = 10
NOUN = "a folder of split folders (train/ val/ test/)"
EDITS = "folders"


def recognise(query) -> bool:
    if names_tables(query.splits):  # --splits train=a.csv,…: split tables, not folders
        return False
    return query.path.is_dir() and bool(query.layout.splits)


def names_tables(splits: str | None) -> bool:
    """Whether `--splits train=A,val=B` names tables (A, B … end in .csv or .tsv) rather than folders."""
    option = parse_splits_option(splits)
    return isinstance(option, dict) and all(name.lower().endswith(TABLE_SUFFIXES) for name in option.values())


def scan(query) -> ImageSet:
    return scan_split_folders(query.layout, classes=query.classes)
