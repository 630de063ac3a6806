"""A folder of split folders (train/ val/ test/, training_set/ test_set/ …) that hold the same class folders.

Split folders are found by structure and named by their words (see `imgclf.data.layout`);
`--splits none` reads the sub-folders as classes and `--splits train=a,val=b` names them.
"""

from __future__ import annotations

from imgclf.data.folders import scan_split_folders
from imgclf.data.imageset import ImageSet

PRIORITY = 10
NOUN = "a folder of split folders (train/ val/ test/)"
EDITS = "folders"


def recognise(query) -> bool:
    return query.path.is_dir() and bool(query.layout.splits)


def scan(query) -> ImageSet:
    return scan_split_folders(query.layout, classes=query.classes)
