"""A Hugging Face image set as Parquet shards (data/train-00000-of-00001.parquet, <config>/<split>/…).

Read with pyarrow (the `imgclf[parquet]` extra; without it, one line names it), without the
`datasets` library: see `imgclf.data.parquet`. The image column is the `datasets` Image feature (a
struct of bytes and path) or a binary column (--path-col names it); the label column is the
ClassLabel feature, or one named as tables' are (--label-col names it); integer labels take their
names from the shards' metadata or the dataset card. A list of labels per row is a multi-label set.
The splits are named by the shards' files or folders; --splits names or ignores them.
"""

from __future__ import annotations

from imgclf.data.imageset import ImageSet
from imgclf.data.parquet import PARQUET_SUFFIX, parquet_shards, scan_parquet
from imgclf.errors import UsageError

PRIORITY = 5  # before split folders: --splits names its splits, not folders (no image file may sit beside it)
NOUN = "a Hugging Face Parquet image set (data/train-*.parquet)"
EDITS = None  # the rows are not files: review lists the findings, the shards stay as they are


def recognise(query) -> bool:
    if query.path.is_file():
        return query.path.name.lower().endswith(PARQUET_SUFFIX)
    return bool(parquet_shards(query.path))


def scan(query) -> ImageSet:
    if query.images is not None:
        raise UsageError("--images names the image folder of a table; a Parquet image set holds its images")
    return scan_parquet(
        query.path,
        image_col=query.path_col,
        label_col=query.label_col,
        classes=query.classes,
        multi_label=query.multi_label,
        splits=query.splits,
    )
