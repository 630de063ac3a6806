"""A CSV/TSV file or a pandas DataFrame with path and label columns as a source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.decode import (
    is_image,
)
from imgclf.data.imageset import SPLIT_NAMES, FileReader, ImageSet, Problem, order_classes
from imgclf.data.layout import (
    split_of_name,
)
from imgclf.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv")


PATH_COLUMNS = ("path", "filepath", "file_path", "filename", "file", "image", "image_path", "img", "fname")


LABEL_COLUMNS = ("label", "class", "category", "target", "class_name", "y")


def _pick_column(
    columns: list[str], given: str | None, candidates: Sequence[str], what: str, flag: str
) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(f"{what} column {given!r} not found; the table has: {', '.join(columns)}")
        return given
    lowered = {c.lower().strip(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    raise DataError(f"no {what} column found among {', '.join(columns)}; name it with {flag}")


def scan_table(
    path: Path,
    *,
    path_col: str | None = None,
    label_col: str | None = None,
    classes: Sequence[str] | None = None,
) -> ImageSet:
    """A CSV/TSV file with a path column and a label column (an optional `split` column is used)."""
    import pandas as pd

    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {str(error).splitlines()[0]}") from error
    return scan_dataframe(
        frame, root=path.parent, path_col=path_col, label_col=label_col, classes=classes, source=str(path)
    )


def scan_dataframe(
    frame: Any,
    *,
    root: str | Path | None = None,
    path_col: str | None = None,
    label_col: str | None = None,
    classes: Sequence[str] | None = None,
    source: str = "DataFrame",
) -> ImageSet:
    """A pandas DataFrame with path and label columns; relative paths resolve against `root`."""
    root = Path(root) if root is not None else Path.cwd()
    columns = [str(c) for c in frame.columns]
    path_column = _pick_column(columns, path_col, PATH_COLUMNS, "path", "--path-col")
    label_column = _pick_column(columns, label_col, LABEL_COLUMNS, "label", "--label-col")
    split_column = next((c for c in columns if c.lower() == "split"), None)
    paths = frame[path_column].astype(str).tolist()
    raw_labels = frame[label_column].astype(str).str.strip().tolist()
    raw_splits = frame[split_column].astype(str).str.strip().str.lower().tolist() if split_column else None
    problems: list[Problem] = []
    keep: list[int] = []
    keys: list[str] = []
    for row, raw_path in enumerate(paths):
        raw_path = raw_path.strip()
        if not raw_path or not raw_labels[row]:
            problems.append(Problem(f"row {row + 2}", "missing", "empty path or label"))
            continue
        candidate = Path(raw_path).expanduser()
        full = candidate if candidate.is_absolute() else root / candidate
        if not full.is_file():
            problems.append(Problem(raw_path, "missing", "listed in the table but not found"))
            continue
        if not is_image(full):
            problems.append(Problem(raw_path, "non-image", "not an image file (skipped)"))
            continue
        keep.append(row)
        keys.append(candidate.as_posix() if not candidate.is_absolute() else str(candidate))
    names = order_classes({raw_labels[i] for i in keep}, classes, source)
    index_of = {name: i for i, name in enumerate(names)}
    selected = [i for i in range(len(keep)) if raw_labels[keep[i]] in index_of]
    labels = np.asarray([index_of[raw_labels[keep[i]]] for i in selected], dtype=np.int64)
    splits = None
    if raw_splits is not None:
        splits = []
        for i in selected:
            value = raw_splits[keep[i]]
            split = SPLIT_NAMES.get(value) or split_of_name(value)
            if split is None:
                raise DataError(f"split column value {value!r} is not train, val or test")
            splits.append(split)
    split_note = f", split column {split_column!r}" if split_column else ""
    return ImageSet(
        [keys[i] for i in selected],
        labels,
        names,
        FileReader(root),
        "table",
        source,
        splits=splits,
        problems=problems,
        description=f"table {Path(source).name}: path column {path_column!r}, label column "
        f"{label_column!r}{split_note} ({len(selected):,} images)",
    )
