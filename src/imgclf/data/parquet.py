"""Hugging Face image sets as Parquet shards, read with pyarrow (the `imgclf[parquet]` extra).

The `datasets` library writes an image set as Parquet shards: `data/train-00000-of-00002.parquet`,
`data/test-00000-of-00001.parquet` (what `push_to_hub` writes), or `<config>/<split>/0000.parquet`
(the Hub's Parquet conversion). Each row holds the image as a struct of `bytes` and `path` and its
label as an integer (a `ClassLabel`, whose names are in the shard's `huggingface` metadata and in
the dataset card's `dataset_info`), a string, or a list (several labels per image).

A row is named `<shard>#<row>` (`data/train-00000-of-00002.parquet#17`), and every reader of an
image location reads such a name as the row's image bytes (`row_bytes`), decoded by the same decoder
and within the same budgets as a file; the images are never written out as files. Shards are read
one row group at a time, and the latest ROW_GROUPS_KEPT row groups of each process are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.decode import ImageDecodeError
from imgclf.data.imageset import FileReader, ImageSet, Problem, order_classes, sort_classes
from imgclf.data.label_sets import LabelSets, label_set_index
from imgclf.data.layout import IGNORED_FOLDERS, SPLITS, parse_splits_option, split_of_name
from imgclf.data.tables import LABEL_COLUMNS
from imgclf.errors import DataError, UsageError

logger = logging.getLogger(__name__)

PARQUET_SUFFIX = ".parquet"
ROW_LOCATION = re.compile(r"^(?P<shard>.+\.parquet)#(?P<row>\d+)$", re.IGNORECASE)
SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")  # train-00000-of-00002
MAX_DEPTH = 3  # <config>/<split>/0000.parquet below the folder given
ROW_GROUPS_KEPT = 2  # per process: the decode workers read their rows in order
ROW_GROUP_MAX_BYTES = 2**30  # a row group is decompressed whole: a larger one is refused, not read
INSTALL_HINT = "pip install 'imgclf[parquet]' (or pip install pyarrow)"


class RowReadError(OSError, ImageDecodeError):
    """A row whose image cannot be read: caught where a file that cannot be read is, and where an
    image that cannot be decoded is."""


def require_pyarrow() -> Any:
    """pyarrow.parquet, or one line naming the extra that brings it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"reading Parquet image sets needs pyarrow: {INSTALL_HINT}") from None
    return pq


def is_row_location(location: object) -> bool:
    """Whether `location` names a row of a Parquet shard (`…/train-00000-of-00001.parquet#17`)."""
    return isinstance(location, str) and ROW_LOCATION.match(location) is not None


def shard_of(location: str) -> str:
    """The shard file of a row location; any other location is itself."""
    found = ROW_LOCATION.match(location)
    return found.group("shard") if found else location


class _Shard:
    """One shard's image bytes, one row group at a time (the latest ROW_GROUPS_KEPT kept). A row
    whose struct has no bytes but a `path` to a file (a set made from local files) reads that file."""

    def __init__(self, path: str) -> None:
        pq = require_pyarrow()
        self.path = path
        self.stat = _stat(path)
        self.file = pq.ParquetFile(path)
        self.column = _image_column_path(self.file.schema_arrow, _chosen_columns.get(path))
        self.columns = [self.column]
        if self.column.endswith(".bytes"):
            struct = self.file.schema_arrow.field(self.column.rsplit(".", 1)[0]).type
            if struct.get_field_index("path") >= 0:
                self.columns.append(self.column[: -len("bytes")] + "path")
        metadata = self.file.metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self.starts = np.cumsum([0, *sizes])
        self.groups: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def row(self, row: int) -> bytes:
        if not 0 <= row < self.starts[-1]:
            raise RowReadError(f"{self.path} has {int(self.starts[-1]):,} rows, not row {row}")
        group = int(np.searchsorted(self.starts, row, side="right") - 1)
        values = self.groups.get(group)
        if values is None:
            size = self.file.metadata.row_group(group).total_byte_size
            if size > ROW_GROUP_MAX_BYTES:
                raise RowReadError(
                    f"row group {group} of {self.path} holds {size / 2**20:,.0f} MiB, over the limit of "
                    f"{ROW_GROUP_MAX_BYTES / 2**20:,.0f} MiB read at once"
                )
            column = self.file.read_row_group(group, columns=self.columns).column(0).combine_chunks()
            if self.column.endswith(".bytes"):
                paths = column.field("path") if len(self.columns) > 1 else None
                values = (column.field("bytes"), paths)
            else:
                values = (column, None)
            self.groups[group] = values
            while len(self.groups) > ROW_GROUPS_KEPT:
                self.groups.popitem(last=False)
        self.groups.move_to_end(group)
        index = row - int(self.starts[group])
        data = values[0][index].as_py()
        if data is None:
            return self._from_path(values[1][index].as_py() if values[1] is not None else None)
        return data

    def _from_path(self, path: str | None) -> bytes:
        """The file a row without bytes names: an absolute path as `datasets` writes it, or a relative
        one below the shard's folder (never above it: `..` does not leave it)."""
        if not path:
            raise RowReadError("no image bytes in this row")
        folder = Path(self.path).parent.resolve()
        candidate = Path(path) if Path(path).is_absolute() else (folder / path).resolve()
        if not Path(path).is_absolute() and not candidate.is_relative_to(folder):
            raise RowReadError(f"no image bytes in this row, and its path {path} leaves the shard's folder")
        if not candidate.is_file():
            raise RowReadError(f"no image bytes in this row, and its path {path} is no file here")
        return candidate.read_bytes()


_chosen_columns: dict[str, str] = {}  # shard → the image column --path-col chose (the first one else)
_shards: OrderedDict[str, _Shard] = OrderedDict()
_lock = threading.Lock()  # prediction reads rows from several threads


def row_bytes(location: str) -> bytes:
    """The image bytes of a row location (`<shard>.parquet#<row>`); a RowReadError when there are none.

    A shard changed on disk since it was opened is opened again."""
    found = ROW_LOCATION.match(location)
    if found is None:
        raise RowReadError(f"{location} names no row of a Parquet shard")
    path, row = found.group("shard"), int(found.group("row"))
    try:
        stat = _stat(path)
    except OSError as error:
        raise RowReadError(f"cannot read {path}: {error.strerror or error}") from error
    with _lock:
        shard = _shards.get(path)
        if shard is None or shard.stat != stat:
            try:
                shard = _Shard(path)
            except (OSError, ValueError, UsageError) as error:
                raise RowReadError(f"cannot read {path}: {error}") from error
            _shards[path] = shard
            while len(_shards) > 8:
                _shards.popitem(last=False)
        _shards.move_to_end(path)
        try:
            return shard.row(row)
        except RowReadError:
            raise
        except (OSError, ValueError, KeyError, DataError) as error:  # pyarrow's errors on a damaged shard
            raise RowReadError(f"cannot read {location}: {error}") from error


def _stat(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def shard_rows(path: str | Path) -> Iterator[str]:
    """The row locations of one shard, in order (what `imgclf predict shard.parquet` reads). A shard
    that cannot be read gives its first row, whose error row says why, as a file's would."""
    pq = require_pyarrow()
    try:
        count = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        count = 1
    for row in range(count):
        yield f"{path}#{row}"


# --- the columns ---------------------------------------------------------------------------------


def _hf_features(schema: Any) -> dict[str, Any]:
    """The `datasets` features stored in a shard's schema metadata ({} when there are none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _image_columns(schema: Any) -> list[str]:
    """Columns that hold encoded images: `datasets`' Image feature, a struct with a binary `bytes`
    field, or a binary column."""
    import pyarrow as pa

    features = _hf_features(schema)
    tagged = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    found = []
    for field in schema:
        kind = field.type
        if pa.types.is_struct(kind):
            inner = kind.field(kind.get_field_index("bytes")) if kind.get_field_index("bytes") >= 0 else None
            if inner is not None and (pa.types.is_binary(inner.type) or pa.types.is_large_binary(inner.type)):
                found.append(field.name)
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            found.append(field.name)
    return [name for name in tagged if name in found] + [name for name in found if name not in tagged]


def _image_column_path(schema: Any, wanted: str | None = None) -> str:
    """The column path read for image bytes: "image.bytes" for a struct, "image" for binary."""
    import pyarrow as pa

    names = _image_columns(schema)
    name = wanted if wanted is not None else (names[0] if names else None)
    if name is None or name not in names:
        raise DataError("no image column (a struct of bytes and path, or binary) in the shard")
    return f"{name}.bytes" if pa.types.is_struct(schema.field(name).type) else name


def _label_names(feature: Any) -> list[str] | None:
    """The class names of a `datasets` ClassLabel feature, or of the ClassLabel a list holds."""
    if not isinstance(feature, dict):
        return None
    if feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(name) for name in feature["names"]]
    if feature.get("_type") in ("Sequence", "List", "LargeList"):
        return _label_names(feature.get("feature"))
    return None


@dataclass
class ShardColumns:
    """The columns a Parquet set is read by, and the class names its metadata gives."""

    image: str
    label: str
    names: list[str] | None  # from the shards' metadata or the dataset card; None: the values are names
    names_from: str
    is_list: bool


def find_parquet_columns(
    schema: Any, card: dict[str, Any], image_col: str | None, label_col: str | None
) -> ShardColumns:
    """The image and label columns, given or found (the Image and ClassLabel features, then the
    names tables use), and the class names; a DataError naming the flag when one is missing."""
    import pyarrow as pa

    columns = list(schema.names)
    images = _image_columns(schema)
    if image_col is not None and image_col not in images:
        raise DataError(
            f"--path-col {image_col!r} is not an image column of the shards "
            f"(those: {', '.join(images) or 'none'})"
        )
    image = image_col or (images[0] if images else None)
    if image is None:
        raise DataError(
            f"no image column among {', '.join(columns)}: a Parquet image set holds each image as a "
            "struct of bytes and path (as `datasets` writes it) or as binary"
        )
    features = _hf_features(schema)
    others = [c for c in columns if c != image]
    if label_col is not None:
        found = {c.lower().strip(): c for c in others}.get(label_col.lower().strip())
        if found is None:
            raise DataError(f"--label-col {label_col!r} is not a column of the shards ({', '.join(others)})")
        label = found
    else:
        tagged = [c for c in others if _label_names(features.get(c)) is not None]
        named = [c for c in others if c.lower().strip() in LABEL_COLUMNS]
        label = (tagged or named or (others if len(others) == 1 else [None]))[0]
        if label is None:
            raise DataError(f"no label column found among {', '.join(others)}; name it with --label-col")
    kind = schema.field(label).type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    names, names_from = _label_names(features.get(label)), "the shards' metadata"
    if names is None and card.get(label) is not None:
        names, names_from = card[label], "the dataset card (README.md)"
    value_type = kind.value_type if is_list else kind
    if names is None or not pa.types.is_integer(value_type):
        names, names_from = None, ""
    return ShardColumns(image, label, names, names_from, is_list)


def card_label_names(folder: Path, config: str | None) -> dict[str, list[str]]:
    """{column: class names} from the dataset card's `dataset_info` (README.md in the folder given
    or the one above it), for the chosen config where the card describes several."""
    import yaml

    for where in (folder, folder.parent):
        card = where / "README.md"
        try:
            text = card.read_text(encoding="utf-8") if card.is_file() else ""
        except (OSError, UnicodeDecodeError):
            continue
        found = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
        if not found:
            continue
        try:
            header = yaml.safe_load(found.group(1)) or {}
        except yaml.YAMLError as error:
            logger.warning(
                "%s: its YAML header cannot be read (%s); class names from the shards only", card, error
            )
            return {}
        infos = header.get("dataset_info") if isinstance(header, dict) else None
        if isinstance(infos, dict):
            infos = [infos]
        if not isinstance(infos, list):
            return {}
        chosen = [i for i in infos if isinstance(i, dict) and i.get("config_name") in (config, None)] or infos
        result: dict[str, list[str]] = {}
        for feature in chosen[0].get("features") or [] if isinstance(chosen[0], dict) else []:
            if isinstance(feature, dict) and "name" in feature:
                names = _card_names(feature.get("dtype")) or _card_names(feature.get("sequence"))
                if names is not None:
                    result[str(feature["name"])] = names
        return result
    return {}


def _card_names(dtype: Any) -> list[str] | None:
    """A card's `class_label: {names: {'0': daisy, …}}`, directly or inside `sequence`/`list`."""
    if not isinstance(dtype, dict):
        return None
    if "class_label" in dtype:
        names = (dtype["class_label"] or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
        if isinstance(names, list):
            return [str(n) for n in names]
        return None
    for key in ("sequence", "list", "feature"):
        if key in dtype:
            return _card_names(dtype[key])
    return None


# --- the shards and their splits -----------------------------------------------------------------


def parquet_shards(folder: Path) -> list[Path] | None:
    """The Parquet files up to MAX_DEPTH below `folder`, sorted; None when the folder holds image
    files (a folder of images with a stray table of features is not a Parquet image set)."""
    from imgclf.data.decode import is_image_file

    found: list[Path] = []
    base = len(folder.parts)
    for directory, subdirs, files in os.walk(folder):
        depth = len(Path(directory).parts) - base
        subdirs[:] = (
            sorted(d for d in subdirs if not d.startswith(".") and d not in IGNORED_FOLDERS)
            if depth < MAX_DEPTH - 1
            else []
        )
        for name in sorted(files):
            if name.lower().endswith(PARQUET_SUFFIX) and not name.startswith("."):
                found.append(Path(directory) / name)
            elif is_image_file(name):
                return None
    return found


def _split_name(shard: Path, root: Path) -> tuple[str, str | None]:
    """The split name a shard's file or folder gives ("validation") and what imgclf calls it."""
    stem = SHARD_SUFFIX.sub("", shard.stem)
    parent = shard.parent.name if shard.parent != root or not stem else ""
    for name in (stem, parent, shard.parent.name):
        if name and split_of_name(name) is not None:
            return name, split_of_name(name)
    return stem or parent, None


def _config_of(shard: Path, root: Path, split_name: str) -> str:
    """The folder that holds one configuration's shards ("default", "data", "." for the root)."""
    folder = shard.parent.relative_to(root)
    if folder.name == split_name and folder != Path("."):
        folder = folder.parent
    return folder.as_posix()


def shards_by_split(path: Path, splits: str | None) -> tuple[Path, dict[str, list[Path]], str | None, str]:
    """(root, {split: shards}, the config's folder, a note on what was left out) of a file or folder.

    `splits`: "auto" reads the split names of the shards' files or folders, "none" reads every
    shard as one pool, "train=NAME,val=NAME" names the splits. Several configurations (one folder
    each) are one error that names them.
    """
    root = path.parent if path.is_file() else path
    shards = [path] if path.is_file() else (parquet_shards(path) or [])
    if not shards:
        raise DataError(f"{path} holds no Parquet shards")
    named = {shard: _split_name(shard, root) for shard in shards}
    configs = sorted({_config_of(shard, root, named[shard][0]) for shard in shards})
    if len(configs) > 1:
        raise UsageError(
            f"{path} holds {len(configs)} configurations ({', '.join(configs)}): give the folder of one "
            f"(imgclf train {root / configs[0]})"
        )
    config = configs[0] if configs[0] not in (".", "data") else None
    option = parse_splits_option(splits)
    if option == "none":
        return root, {"all": shards}, config, ""
    if isinstance(option, dict):
        wanted = {name.lower(): split for split, name in option.items()}
        found: dict[str, list[Path]] = {}
        for shard in shards:
            split = wanted.get(named[shard][0].lower())
            if split is not None:
                found.setdefault(split, []).append(shard)
        missing = [
            name for name in option.values() if name.lower() not in {n.lower() for n, _ in named.values()}
        ]
        if missing:
            names = sorted({n for n, _ in named.values()})
            raise UsageError(f"--splits: no split {missing[0]!r} in {path} (its splits: {', '.join(names)})")
        left = sorted({n for s, (n, _) in named.items() if n.lower() not in wanted})
        return root, found, config, f"left out: {', '.join(left)}" if left else ""
    unknown = sorted({name for name, split in named.values() if split is None})
    if unknown and len(unknown) == len({n for n, _ in named.values()}) and len(unknown) == 1:
        return root, {"all": shards}, config, ""  # one pool with no split name: imgclf splits it
    if unknown:
        raise DataError(
            f"{path}: the split {unknown[0]!r} is not train, val or test; name the splits with "
            f"--splits train=NAME,val=NAME,test=NAME, or read every shard as one pool with --splits none"
        )
    found = {}
    for shard in shards:
        found.setdefault(named[shard][1], []).append(shard)
    if list(found) == ["train"]:  # a training split alone is the data: validation and test are carved
        return root, {"all": shards}, config, ""
    return root, found, config, ""


# --- the scan ------------------------------------------------------------------------------------


def scan_parquet(
    path: Path,
    *,
    image_col: str | None = None,
    label_col: str | None = None,
    classes: Sequence[str] | None = None,
    multi_label: bool | None = None,
    splits: str | None = "auto",
) -> ImageSet:
    """A Parquet file, or a folder of shards in a `datasets` layout, as an ImageSet of row locations.

    The labels are read from the label column alone (no image is read here); rows without a label
    (-1, null, empty) are problems, and a split with no labels at all is left out in one line.
    """
    pq = require_pyarrow()
    root, by_split, config, note = shards_by_split(path, splits)
    ordered = [(split, shard) for split in (*SPLITS, "all") for shard in by_split.get(split, [])]
    try:
        schema = pq.read_schema(ordered[0][1])
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {ordered[0][1]}: {error}") from error
    card = card_label_names(root, config)
    columns = find_parquet_columns(schema, card, image_col, label_col)
    for _, shard in ordered:  # the rows of this process read the image column chosen
        location = str(root / shard.relative_to(root))
        if _chosen_columns.get(location) != (image_col and columns.image):
            with _lock:
                _shards.pop(location, None)
        if image_col is not None:
            _chosen_columns[location] = columns.image
        else:
            _chosen_columns.pop(location, None)
    for _, shard in ordered[1:]:  # every shard's footer: the same image and label columns
        try:
            names = pq.read_schema(shard).names
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read {shard}: {error}") from error
        missing = [c for c in (columns.image, columns.label) if c not in names]
        if missing:
            raise DataError(
                f"{shard.relative_to(root)} lacks the column {missing[0]!r} that "
                f"{ordered[0][1].relative_to(root)} has: the shards of one set share their columns"
            )
    if columns.is_list and multi_label is False:
        raise DataError(f"the label column {columns.label!r} holds a list of labels per image (multi-label)")
    keys: list[str] = []
    values: list[Any] = []
    split_of: list[str] = []
    counts: dict[Path, int] = {}
    problems: list[Problem] = []
    unlabelled: list[str] = []
    for split, shard in ordered:
        try:
            column = pq.read_table(shard, columns=[columns.label]).column(0).to_pylist()
        except (OSError, ValueError, KeyError) as error:
            raise DataError(
                f"cannot read the label column {columns.label!r} of {shard.relative_to(root)}: {error}"
            ) from error
        name = shard.relative_to(root).as_posix()
        labelled = [row for row, value in enumerate(column) if _has_label(value)]
        if not labelled:
            unlabelled.append(name)
            continue
        for row, value in enumerate(column):
            if not _has_label(value):
                problems.append(Problem(f"{name}#{row}", "missing", "no label in this row"))
        keys += [f"{name}#{row}" for row in labelled]
        values += [column[row] for row in labelled]
        split_of += [split] * len(labelled)
        counts[shard] = len(labelled)
    if not keys:
        raise DataError(f"{path}: no row of its shards has a label in the column {columns.label!r}")
    if unlabelled:
        shown = ", ".join(unlabelled[:3]) + (
            f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else ""
        )
        logger.info("%s: left out %s (no labels: a test set without answers)", path, shown)
    image_set, chosen = _labelled_set(keys, values, columns, classes, root, str(path))
    split_of = [split_of[i] for i in chosen]
    image_set.problems = problems
    image_set.splits = split_of if set(split_of) != {"all"} else None
    image_set.layout = "parquet"
    if image_set.splits is not None:
        kept = {split: split_of.count(split) for split in dict.fromkeys(split_of)}
        shards_of = {split: [s for sp, s in ordered if sp == split and s in counts] for split in kept}
        parts = ", ".join(f"{_pattern(shards_of[split], root)} → {split} ({kept[split]:,})" for split in kept)
    else:
        parts = (
            f"{_pattern([s for _, s in ordered if s in counts], root)} ({len(keys):,} rows, no splits named)"
        )
    where = f"class names from {columns.names_from}" if columns.names else "class names are the label values"
    extra = f"; {note}" if note else ""
    image_set.description = (
        f"Parquet image set {parts}; image column {columns.image!r}, label column {columns.label!r}, "
        f"{where}{extra}"
    )
    if columns.names is None and values and isinstance(values[0], int):
        logger.warning(
            "%s: the labels are integers and no class names were found (no ClassLabel in the shards' "
            "metadata or the dataset card): the classes are named by their numbers", path,
        )  # fmt: skip
    return image_set


def _has_label(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, list):
        return True  # an empty list: an image with none of the labels
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value >= 0  # datasets' ClassLabel writes -1 for no label
    return bool(str(value).strip())


def _pattern(shards: list[Path], root: Path) -> str:
    """`data/train-*.parquet (2 shards)` for a split's shards, or the one shard's name."""
    names = [s.relative_to(root).as_posix() for s in shards]
    if len(names) == 1:
        return names[0]
    folders = {s.parent.relative_to(root).as_posix() for s in shards}
    stems = {SHARD_SUFFIX.sub("", s.stem) for s in shards}
    folder = next(iter(folders)) + "/" if len(folders) == 1 and folders != {"."} else ""
    if len(folders) == 1 and len(stems) == 1 and next(iter(stems)) != shards[0].stem:
        return f"{folder}{next(iter(stems))}-*{PARQUET_SUFFIX} ({len(names)} shards)"
    if len(folders) == 1:
        return f"{folder}*{PARQUET_SUFFIX} ({len(names)} shards)"
    return f"{len(names)} shards in {', '.join(sorted(folders))}"


def _labelled_set(
    keys: list[str],
    values: list[Any],
    columns: ShardColumns,
    classes: Sequence[str] | None,
    root: Path,
    source: str,
) -> tuple[ImageSet, list[int]]:
    """The rows' labels as an ImageSet (class names, or for list labels a multi-label set), and the
    positions of the rows kept (--classes keeps the rows of the classes it names)."""
    names = columns.names

    def named(value: Any) -> str:
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            return names[value]
        return str(value).strip()

    if not columns.is_list:
        text = [named(v) for v in values]
        found = set(text)
        if classes is not None or names is None:
            ordered = order_classes(found, classes, source)
        else:  # the ClassLabel's order, so class i is the dataset's label i
            ordered = [n for n in names if n in found] + sort_classes(found - set(names))
        index = {name: i for i, name in enumerate(ordered)}
        chosen = [i for i, name in enumerate(text) if name in index]
        labels = np.asarray([index[text[i]] for i in chosen], dtype=np.int64)
        return ImageSet(
            [keys[i] for i in chosen], labels, ordered, FileReader(root), "parquet", source
        ), chosen
    if classes is not None:
        raise UsageError("--classes orders the classes of single-label data; this set is multi-label")
    sets = [[named(v) for v in row] for row in values]
    present = {label for row in sets for label in row}
    labels = [n for n in names if n in present] if names is not None else []
    labels += sort_classes(present - set(labels))
    position = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(sets), len(labels)), np.uint8)
    for row, labels_of_row in enumerate(sets):
        targets[row, [position[label] for label in labels_of_row]] = 1
    label_index, set_names = label_set_index(targets, labels)
    image_set = ImageSet(keys, label_index, set_names, FileReader(root), "parquet", source)
    image_set.targets = targets
    image_set.label_names = labels
    summary = LabelSets("list", (columns.label,), None, tuple(labels), targets).summary()
    image_set.label_summary = f"{Path(source).name} is {summary}"
    return image_set, list(range(len(keys)))
