"""One table per split (train.csv, val.csv, test.csv; my_training.csv …; Training_set.csv, Testing_set.csv).

The tables are found by the words of their names, as split folders are (train / training, val /
valid / validation / dev, test / testing, with any prefix or suffix), or named with `--splits
train=A.csv,val=B.csv,test=C.csv`; `--splits none` reads the training table alone. Every table must
have the same path and label columns (found in the training table, or given with --path-col and
--label-col); a table that has the path column alone holds no labels (a competition's test set)
and is left out, said in one line. The images are found as a single table's are: relative to the
tables, in a folder beside them, or by file name for absolute paths from another machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imgclf.data.imageset import ImageSet
from imgclf.data.layout import SPLITS, parse_splits_option, split_of_name
from imgclf.data.sources.split_folders import names_tables
from imgclf.data.tables import find_columns, read_table, scan_dataframe
from imgclf.errors import DataError, UsageError

logger = logging.getLogger(__name__)

PRIORITY = 15  # after split folders, before IDX files and a single table
NOUN = "one CSV/TSV table per split (train.csv, val.csv, test.csv)"
EDITS = None  # review --apply writes a reviewed copy of one table; of split tables, not yet


def split_tables(query) -> dict[str, list[Path]]:
    """The folder's tables by the split their names (or --splits) give them."""
    option = parse_splits_option(query.splits)
    if option == "none":
        return {}
    if isinstance(option, dict):
        if not names_tables(query.splits):
            return {}
        found: dict[str, list[Path]] = {}
        for split, name in option.items():
            path = query.path / name
            if not path.is_file():
                raise UsageError(f"--splits {split}={name}: no such table in {query.path}")
            found[split] = [path]
        return found
    found = {}
    for table in query.tables:
        split = split_of_name(table.stem)
        if split is not None:
            found.setdefault(split, []).append(table)
    return found


def recognise(query) -> bool:
    """A folder with a training table and a validation or test table beside it."""
    if not query.path.is_dir():
        return False
    found = split_tables(query)
    return "train" in found and len(found) >= 2


def scan(query) -> ImageSet:
    found = split_tables(query)
    twice = {split: tables for split, tables in found.items() if len(tables) > 1}
    if twice:
        split, tables = next(iter(twice.items()))
        names = ", ".join(t.name for t in tables)
        raise DataError(
            f"{query.path}: {names} are all {split} tables; name the splits with "
            "--splits train=A.csv,val=B.csv,test=C.csv"
        )
    tables = {split: found[split][0] for split in SPLITS if split in found}
    frames = {split: read_table(path) for split, path in tables.items()}
    train = find_columns(
        frames["train"], query.path_col, query.label_col, query.multi_label, str(tables["train"])
    )
    labels = [train.label] if train.label else list(train.sets.labels)
    kept, left_out = {}, []
    for split, frame in frames.items():
        frame = _named_as(frame, [train.path, *labels])  # "Label" is the training table's "label"
        columns = [str(c) for c in frame.columns]
        missing = [name for name in [train.path, *labels] if name not in columns]
        if not missing:
            kept[split] = frame
        elif columns == [train.path]:
            left_out.append(f"{tables[split].name} (only the path column {train.path!r}: no labels)")
        else:
            raise DataError(
                f"{tables[split].name} lacks {', '.join(repr(m) for m in missing)}, which "
                f"{tables['train'].name} has: split tables must share their path and label columns "
                f"(its columns: {', '.join(columns)}; --path-col and --label-col name them, and "
                "--splits none reads the training table alone)"
            )
    others = [p.name for p in query.tables if p not in tables.values()]
    if left_out or others:
        logger.info(
            "%s: split tables %s; left out: %s", query.path, ", ".join(t.name for t in tables.values()),
            "; ".join(left_out + [f"{name} (not a split's table)" for name in others]),
        )  # fmt: skip
    return _scan_together(query, tables, kept, train)


def _named_as(frame, names: list[str]):
    """The frame with its columns renamed to `names` where they differ only in case or spaces."""
    wanted = {name.lower().strip(): name for name in names}
    renames = {c: wanted[str(c).lower().strip()] for c in frame.columns if str(c).lower().strip() in wanted}
    return frame.rename(columns={old: new for old, new in renames.items() if old != new})


def _scan_together(query, tables, frames, train) -> ImageSet:
    """The kept tables as one table with a split column, read as a single table is; the layout line
    names each split's table and count."""
    import pandas as pd

    joined = pd.concat(
        [
            frame.drop(columns=["split"], errors="ignore").assign(split=split)
            for split, frame in frames.items()
        ],
        ignore_index=True,
    )
    image_set = scan_dataframe(
        joined,
        root=query.path,
        path_col=train.path,
        label_col=train.label,
        classes=query.classes,
        source=str(query.path),
        images=query.images,
        multi_label=query.multi_label if train.label else True,
    )
    counts = {split: image_set.splits.count(split) for split in frames}
    parts = ", ".join(f"{tables[split].name} → {split} ({counts[split]:,})" for split in frames)
    image_set.description = f"split tables {parts}; " + image_set.description.split(": ", 1)[1].replace(
        ", split column 'split'", ""
    )
    image_set.layout = "split-tables"
    return image_set
