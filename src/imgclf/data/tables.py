"""A CSV/TSV file or a pandas DataFrame with path and label columns as a source.

Tables come as Kaggle ships them: `Training_set.csv` holding bare names (`Image_1.jpg`) or ids
without an extension (`0a3f…`) beside a `train/` folder that holds the images. When the paths are not
found beside the table, `locate_images` looks in its sibling folders (image-like names first) and in
the folder given by `--images DIR`, matching ids to files with an image extension, and the folder and
the match it settled on are said in the data line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from imgclf.data.decode import (
    IMAGE_EXTENSIONS,
    is_image,
)
from imgclf.data.imageset import SPLIT_NAMES, FileReader, ImageSet, Problem, order_classes
from imgclf.data.label_sets import find_label_sets, label_set_name
from imgclf.data.layout import (
    split_of_name,
    visible_entries,
)
from imgclf.errors import DataError, UsageError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv")

# folders beside a table that usually hold its images, looked in first (any other folder follows)
IMAGE_FOLDER_NAMES = (
    "images", "image", "imgs", "img", "train", "train_images", "training", "training_images",
    "train_data", "data", "photos", "pictures", "jpg", "jpeg", "png", "all_images",
)  # fmt: skip
ID_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".heic", ".avif")
SAMPLE_ROWS = 200  # rows tried against each candidate folder
MAX_CANDIDATES = 64


@dataclass(frozen=True)
class ImageLocation:
    """Where a table's paths point: relative to `base` (or, for rows not there, to the `more`
    folders that hold the rest: HAM10000_images_part_1/ and _part_2/), read `tail` trailing parts
    of each path (0: all of it), with `suffix` appended (an id given without its extension)."""

    base: Path
    suffix: str = ""
    tail: int = 0
    more: tuple[Path, ...] = ()

    @property
    def bases(self) -> tuple[Path, ...]:
        return (self.base, *self.more)

    def key(self, raw: str) -> str:
        parts = PurePosixPath(raw.replace("\\", "/")).parts
        if self.tail:
            parts = parts[-self.tail :]
        return "/".join(parts) + self.suffix

    def describe(self, root: Path) -> str:
        places = []
        for base in self.bases:
            try:
                where = base.relative_to(root).as_posix()
                places.append("beside it" if where == "." else f"{where}/")
            except ValueError:
                places.append(str(base))
        where = places[0] if places == ["beside it"] else "in " + " and ".join(places)
        how = []
        if self.tail:
            how.append("by file name, the folders the table names left out")
        if self.suffix:
            how.append(f"ids matched as ID{self.suffix}")
        return where + (f" ({'; '.join(how)})" if how else "")


def candidate_folders(root: Path, images: Path | None) -> list[Path]:
    """The folders a table's relative paths may start from: `images` alone when given; else the
    table's own folder, its sub-folders (image-like names first) and theirs (train/train/)."""
    if images is not None:
        if not images.is_dir():
            raise UsageError(f"--images {images}: not a folder")
        return [images]
    folders = [root]
    subs = sorted(
        (p for p in visible_entries(root) if p.is_dir()),
        key=lambda p: (p.name.lower() not in IMAGE_FOLDER_NAMES, p.name.lower()),
    )
    for sub in subs:
        folders.append(sub)
    for sub in subs:
        folders += [p for p in visible_entries(sub) if p.is_dir()][:8]
    return folders[:MAX_CANDIDATES]


class _Listings:
    """The names in each folder, listed once: a table of 100,000 rows tried against 20 folders is
    20 directory listings, not two million stat calls."""

    def __init__(self) -> None:
        self.names: dict[str, frozenset[str]] = {}

    def listing(self, directory: str | Path) -> frozenset[str]:
        directory = str(directory)
        if directory not in self.names:
            try:
                self.names[directory] = frozenset(os.listdir(directory))
            except OSError:
                self.names[directory] = frozenset()
        return self.names[directory]

    def exists(self, base: Path, key: str) -> bool:
        folder, _, name = key.rpartition("/")
        return name in self.listing(os.path.join(base, folder) if folder else base)


def locate_images(raw_paths: Sequence[str], root: Path, images: Path | None = None) -> ImageLocation | None:
    """Where most of a sample of `raw_paths` exist as files: the paths as given from each candidate
    folder, then with an image extension appended (ids), then by their file names alone (a table
    written on another machine); None when no folder holds any."""
    given = [p.strip() for p in raw_paths if p.strip()]
    if not given:
        return None
    step = max(1, len(given) // SAMPLE_ROWS)
    sample = given[::step][:SAMPLE_ROWS]
    absolute = [p for p in sample if Path(p).expanduser().is_absolute()]
    if absolute and sum(Path(p).expanduser().is_file() for p in absolute) > len(absolute) // 2:
        return ImageLocation(root)  # absolute paths that exist: nothing to look for
    listings = _Listings()
    has_folders = any("/" in p.replace("\\", "/").lstrip("/") for p in sample)
    has_extension = sum(os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS for p in sample) > len(sample) // 2
    tails = (0, 1) if has_folders else (0,)
    suffixes = ("",) if has_extension else ("", *ID_EXTENSIONS, *(s.upper() for s in ID_EXTENSIONS))
    folders = candidate_folders(root, images)
    best, best_hits = None, 0
    for tail in tails:
        for base in folders:
            for suffix in suffixes:
                location = ImageLocation(base, suffix, tail)
                hits = sum(listings.exists(base, location.key(p)) for p in sample)
                if hits > best_hits:
                    best, best_hits = location, hits
                if hits == len(sample):
                    return location
    if best is None:
        return None
    best, best_hits = _with_more_folders(best, best_hits, sample, folders, listings)
    # a folder the table does not name must hold most of it: a test/ folder beside train/ often holds
    # files of the same names. The paths as given (or in --images) stand with any hit, and the rows
    # they miss are reported.
    as_given = best.base == root and not best.suffix and not best.tail and not best.more
    if as_given or images is not None or best_hits * 2 > len(sample):
        return best
    return None


def _with_more_folders(
    best: ImageLocation, hits: int, sample: list[str], folders: list[Path], listings: _Listings
) -> tuple[ImageLocation, int]:
    """`best` with the other folders that hold a tenth or more of the sample, all of it rows the
    folders taken miss, and share no file name with them: parts of one set (HAM10000_images_part_1/,
    _part_2/), not a test/ folder that reuses the names of train/ for other images."""
    taken = [best.base]
    found = {p for p in sample if listings.exists(best.base, best.key(p))}
    while len(found) < len(sample):
        scores = []
        for folder in folders:
            if folder in taken or any(folder in t.parents or t in folder.parents for t in taken):
                continue
            holds = {p for p in sample if listings.exists(folder, best.key(p))}
            shared = listings.listing(folder) & set().union(*(listings.listing(t) for t in taken))
            if len(holds) * 10 >= len(sample) and not holds & found and not shared:
                scores.append((len(holds), folder, holds))
        if not scores:
            break
        _, folder, holds = max(scores, key=lambda score: score[0])
        taken.append(folder)
        found |= holds
    if len(taken) == 1:
        return best, hits
    return ImageLocation(best.base, best.suffix, best.tail, tuple(taken[1:])), len(found)


PATH_COLUMNS = (
    "path", "filepath", "file_path", "filename", "file_name", "file", "image", "image_path", "image_name",
    "image_id", "img", "img_id", "img_name", "fname", "id",
)  # fmt: skip


LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "class_name", "tags", "y")
# a label column named otherwise ("Finding Labels", "class_id", "Tag list"): the one column whose name
# holds one of these words
LABEL_WORDS = ("label", "class", "tag", "categor", "target")


def _path_column_by_values(frame: Any, columns: list[str]) -> str | None:
    """The one column whose values are mostly image file names ("Image Index": 00000001_000.png), for a
    table that names its path column in no way imgclf knows; None when no single column is."""
    found = []
    for column in columns:
        values = [v.strip() for v in frame[column].astype(str).tolist()[:SAMPLE_ROWS] if v.strip()]
        named = sum(os.path.splitext(v)[1].lower() in IMAGE_EXTENSIONS for v in values)
        if values and named * 2 > len(values):
            found.append(column)
    return found[0] if len(found) == 1 else None


def _label_column_by_word(columns: list[str]) -> str | None:
    named = [c for c in columns if any(word in c.lower() for word in LABEL_WORDS)]
    return named[0] if len(named) == 1 else None


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


def read_table(path: Path) -> Any:
    """A CSV/TSV file as a DataFrame of text (a DataError naming the file when it cannot be read)."""
    import pandas as pd

    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {str(error).splitlines()[0]}") from error


def scan_table(
    path: Path,
    *,
    path_col: str | None = None,
    label_col: str | None = None,
    classes: Sequence[str] | None = None,
    images: str | Path | None = None,
    multi_label: bool | None = None,
) -> ImageSet:
    """A CSV/TSV file with a path column and a label column (an optional `split` column is used)."""
    return scan_dataframe(
        read_table(path),
        root=path.parent,
        path_col=path_col,
        label_col=label_col,
        classes=classes,
        source=str(path),
        images=images,
        multi_label=multi_label,
    )


@dataclass
class TableColumns:
    """The columns a table is read by: paths, labels (or 0/1 label columns: `sets`), and splits."""

    path: str
    label: str | None
    split: str | None
    sets: Any  # the multi-label columns found (`find_label_sets`), or None

    def describe(self) -> str:
        labels = f"label column {self.label!r}" if self.sets is None else self.sets.describe_columns()
        split = f", split column {self.split!r}" if self.split else ""
        return f"path column {self.path!r}, {labels}{split}"


def find_columns(
    frame: Any, path_col: str | None, label_col: str | None, multi_label: bool | None, source: str
) -> TableColumns:
    """The path, label and split columns, given or found by their names and values (NIH's "Image
    Index", a path and one other column such as id,has_cactus, "Finding Labels"), and the label sets
    of a multi-label table; a DataError that says which column is missing."""
    columns = [str(c) for c in frame.columns]
    known = {c.lower().strip() for c in columns}
    if path_col is None and not known & set(PATH_COLUMNS):
        path_col = _path_column_by_values(frame, columns)  # NIH's "Image Index"
    path_column = _pick_column(columns, path_col, PATH_COLUMNS, "path", "--path-col")
    others = [c for c in columns if c != path_column and c.lower() != "split"]
    if label_col is None and len(others) == 1 and not any(c.lower().strip() in LABEL_COLUMNS for c in others):
        label_col = others[0]  # a path and one other column (id,has_cactus): that one holds the labels
    if label_col is None and not known & set(LABEL_COLUMNS):
        label_col = _label_column_by_word(others)  # "Finding Labels"
    try:
        label_column: str | None = _pick_column(columns, label_col, LABEL_COLUMNS, "label", "--label-col")
    except DataError:
        if label_col is not None or multi_label is False:
            raise
        label_column = None  # no label column by name: one 0/1 column per label, perhaps
    sets = find_label_sets(frame, path_column, label_column, multi_label)
    if sets is None and multi_label:
        column = f"the label column {label_column!r} joins no labels" if label_column else "no column"
        raise DataError(
            f"--multi-label: {column} with a space, |, ; or a quoted comma, and {Path(source).name} has "
            "no 0/1 columns, one per label"
        )
    if sets is None and label_column is None:
        label_column = _pick_column(columns, None, LABEL_COLUMNS, "label", "--label-col")  # its error
    split_column = next((c for c in columns if c.lower() == "split"), None)
    return TableColumns(path_column, label_column, split_column, sets)


@dataclass
class FoundRows:
    """The table's rows whose image was found: their row numbers and keys, and the problems of the rest."""

    rows: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    missing: int = 0


def find_rows(paths: list[str], raw_labels: list[str], location: ImageLocation, root: Path) -> FoundRows:
    """Each row's image where `locate_images` found the table's images (keys relative to the table's
    folder where they can be); empty, missing and non-image rows are problems."""
    found, listings = FoundRows(), _Listings()
    for row, raw_path in enumerate(paths):
        raw_path = raw_path.strip()
        if not raw_path or not raw_labels[row]:
            found.problems.append(Problem(f"row {row + 2}", "missing", "empty path or label"))
            continue
        candidate = Path(raw_path).expanduser()
        if not candidate.is_absolute() or location.tail:
            relative = location.key(raw_path)
            base = next((b for b in location.bases if listings.exists(b, relative)), location.base)
            candidate = base / relative
            if candidate.is_relative_to(root):  # keys relative to the table's folder where they can be
                candidate = candidate.relative_to(root)
        full = candidate if candidate.is_absolute() else root / candidate
        if not full.is_file():
            found.problems.append(
                Problem(raw_path, "missing", f"listed in the table but not found {location.describe(root)}")
            )
            found.missing += 1
            continue
        if not is_image(full):
            found.problems.append(Problem(raw_path, "non-image", "not an image file (skipped)"))
            continue
        found.rows.append(row)
        found.keys.append(candidate.as_posix() if not candidate.is_absolute() else str(candidate))
    return found


def row_splits(raw_splits: list[str] | None, rows: list[int]) -> list[str] | None:
    """The split column's values of these rows as train, val or test (a DataError for another)."""
    if raw_splits is None:
        return None
    splits = []
    for row in rows:
        value = raw_splits[row]
        split = SPLIT_NAMES.get(value) or split_of_name(value)
        if split is None:
            raise DataError(f"split column value {value!r} is not train, val or test")
        splits.append(split)
    return splits


def scan_dataframe(
    frame: Any,
    *,
    root: str | Path | None = None,
    path_col: str | None = None,
    label_col: str | None = None,
    classes: Sequence[str] | None = None,
    source: str = "DataFrame",
    images: str | Path | None = None,
    multi_label: bool | None = None,
) -> ImageSet:
    """A pandas DataFrame with path and label columns; relative paths resolve against `root`, or
    where `locate_images` finds them (in `images` when given)."""
    root = Path(root) if root is not None else Path.cwd()
    images = Path(images).expanduser() if images is not None else None
    columns = find_columns(frame, path_col, label_col, multi_label, source)
    sets = columns.sets
    if sets is not None and classes is not None:
        raise UsageError("--classes orders the classes of single-label data; this table is multi-label")
    paths = frame[columns.path].astype(str).tolist()
    if sets is not None:  # each row's label set as one name; an image may have none
        raw_labels = [label_set_name(row, sets.labels) for row in sets.targets]
    else:
        raw_labels = frame[columns.label].astype(str).str.strip().tolist()
    raw_splits = None
    if columns.split:
        raw_splits = frame[columns.split].astype(str).str.strip().str.lower().tolist()
    name = Path(source).name
    location = locate_images(paths, root, images)
    if location is None:
        raise DataError(missing_account(name, len(paths), root, images))
    found = find_rows(paths, raw_labels, location, root)
    names = order_classes({raw_labels[row] for row in found.rows}, classes, source)
    index_of = {name: i for i, name in enumerate(names)}
    selected = [i for i, row in enumerate(found.rows) if raw_labels[row] in index_of]
    rows = [found.rows[i] for i in selected]
    labels = np.asarray([index_of[raw_labels[row]] for row in rows], dtype=np.int64)
    where = location.describe(root)
    if found.missing:
        examples = ", ".join(p.path for p in found.problems if p.kind == "missing")[:200]
        logger.warning(
            "%s: %d of its %d rows name no file %s (%s); --images DIR names the image folder",
            name, found.missing, len(paths), where, examples,
        )  # fmt: skip
    if location.base != root or location.suffix or location.tail or location.more:
        logger.info("%s: images found %s", name, where)
    image_set = ImageSet(
        [found.keys[i] for i in selected],
        labels,
        names,
        FileReader(root),
        "table",
        source,
        splits=row_splits(raw_splits, rows),
        problems=found.problems,
        description=f"table {name}: {columns.describe()}, images {where} ({len(selected):,} images)",
    )
    if sets is not None:
        image_set.targets = sets.targets[rows]
        image_set.label_names = list(sets.labels)
        image_set.label_summary = f"{name} is " + sets.with_targets(image_set.targets).summary()
    return image_set


def refuse_multi_label(image_set: ImageSet) -> None:
    """The commands that take one label per image (the label check, features, a single-label
    model's evaluation) stop at a multi-label set with its summary: reading "fog|rain" as a class of
    its own would be a silent wrong answer. `train` and a multi-label model's `evaluate` read it."""
    if image_set.multi_label:
        raise DataError(
            f"{image_set.label_summary}. This takes one label per image (`imgclf train` makes a "
            "multi-label model of it; 'imgclf check' reports on it): give --single-label to read each "
            "label column value as one class"
        )


def missing_account(name: str, rows: int, root: Path, images: Path | None) -> str:
    """The one-line error of a table none of whose rows names a file: how many rows, where imgclf
    looked, and the option that settles it."""
    looked = candidate_folders(root, images)
    shown = []
    for folder in looked[:6]:
        try:
            shown.append(folder.relative_to(root).as_posix() + "/" if folder != root else "beside it")
        except ValueError:
            shown.append(str(folder))
    more = f" and {len(looked) - 6} more folders" if len(looked) > 6 else ""
    option = (
        "check the folder given to --images"
        if images is not None
        else "give the image folder with --images DIR"
    )
    return (
        f"none of the {rows:,} rows of {name} names an image found: looked {', '.join(shown)}{more} "
        f"(paths as given, ids with {', '.join(ID_EXTENSIONS[:3])} …, and by file name alone); "
        f"{option}, or the path column with --path-col"
    )
