"""Every data source becomes one `ImageSet`: sample keys, integer labels, ordered class names,
the split the layout gave (if any), a reader for the pixels, and the problems found on the way.

Sources: a folder of class folders; a folder of split folders (train/ val|valid|validation/ test/);
a CSV/TSV file or a pandas DataFrame with path and label columns; a .zip/.tar/.tar.gz holding any of
those (unpacked once into the cache, keyed by content hash); MNIST-style IDX files; numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.decode import (
    ImageDecodeError,
    ImageHeader,
    decode_image,
    is_image,
    read_header,
)
from imgclf.data.layout import (
    IGNORED_FOLDERS,
    FolderLayout,
    describe,
    find_layout,
    split_of_name,
    sub_folders,
    unwrap,
    visible_entries,
)
from imgclf.errors import DataError, UsageError
from imgclf.paths import cache_dir

logger = logging.getLogger(__name__)

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
TABLE_SUFFIXES = (".csv", ".tsv")
PATH_COLUMNS = ("path", "filepath", "file_path", "filename", "file", "image", "image_path", "img", "fname")
LABEL_COLUMNS = ("label", "class", "category", "target", "class_name", "y")


@dataclass
class Problem:
    """A file left out, and why. kind: non-image, corrupt, missing."""

    path: str
    kind: str
    reason: str


class FileReader:
    """Reads samples from files below a root folder (keys are relative paths or absolute ones)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)

    def location(self, key: str) -> str:
        return os.path.join(self._root, key)  # as root / key (an absolute key stays itself), 10x faster

    def open(self, key: str) -> Image.Image:
        return decode_image(self.location(key))

    def header(self, key: str) -> ImageHeader:
        return read_header(self.location(key))


class ArrayReader:
    """Reads samples from an in-memory array (N, H, W[, C]); keys are "array:<index>"."""

    def __init__(self, images: np.ndarray, name: str = "array") -> None:
        self.images = images
        self.name = name

    def location(self, key: str) -> str:
        return f"{self.name}[{key.split(':', 1)[1]}]"

    def open(self, key: str) -> Image.Image:
        return array_to_image(self.images[int(key.split(":", 1)[1])])

    def header(self, key: str) -> ImageHeader:
        image = self.images[int(key.split(":", 1)[1])]
        channels = 1 if image.ndim == 2 or image.shape[-1] == 1 else image.shape[-1]
        mode = "L" if channels == 1 else "RGB"
        return ImageHeader(image.shape[1], image.shape[0], mode, None, False)


def array_to_image(array: np.ndarray) -> Image.Image:
    """One image array (H, W), (H, W, 1|3|4) or (C, H, W) → Pillow image (uint8, or 0–1 floats)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if array.size and np.nanmax(array) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))  # L, RGB or RGBA by shape
    raise DataError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")


@dataclass
class ImageSet:
    """Samples of one data source, ready to split and load."""

    keys: list[str]
    labels: np.ndarray
    classes: list[str]
    reader: FileReader | ArrayReader
    layout: str
    source: str
    splits: list[str] | None = None
    headers: list[ImageHeader] | None = None
    problems: list[Problem] = field(default_factory=list)
    file_stats: list[str] | None = None  # "size mtime" per sample, filled once by file_list_digest
    description: str = ""  # what was found, in one line ("split folders training_set → train (8,000) …")

    def __len__(self) -> int:
        return len(self.keys)

    def location(self, index: int) -> str:
        return self.reader.location(self.keys[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """A new ImageSet with only these samples (same classes, reader and problems)."""
        indices = [int(i) for i in indices]
        return ImageSet(
            keys=[self.keys[i] for i in indices],
            labels=self.labels[indices],
            classes=self.classes,
            reader=self.reader,
            layout=self.layout,
            source=self.source,
            splits=[self.splits[i] for i in indices] if self.splits is not None else None,
            headers=[self.headers[i] for i in indices] if self.headers is not None else None,
            problems=self.problems,
            file_stats=[self.file_stats[i] for i in indices] if self.file_stats is not None else None,
            description=self.description,
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def fingerprint(self) -> str:
        """A short hash of the sample list and labels: the same data gives the same fingerprint."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.classes).encode())
        for key, label in zip(self.keys, self.labels.tolist()):
            digest.update(f"{key}\0{label}\n".encode())
        return digest.hexdigest()[:16]


def natural_key(name: str) -> list:
    """Sort "2" before "10" and "img2" before "img10"; otherwise alphabetical."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part
    ]


def sort_classes(names: set[str] | list[str]) -> list[str]:
    return sorted(set(names), key=natural_key)


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_archive(path: Path) -> Path:
    """Unpack an archive once into the cache (keyed by its content hash) and return the folder.

    A second call with the same archive content returns the existing folder without unpacking.
    """
    digest = _file_sha256(path)[:20]
    target = cache_dir() / "archives" / digest
    if (target / ".imgclf-complete").exists():
        logger.info("using unpacked %s from the cache: %s", path.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=target.parent))
    logger.info("unpacking %s into the cache (%s), once", path.name, target)
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)  # zipfile drops absolute paths and ".." parts
        else:
            with tarfile.open(path) as archive:
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(tmp, filter="data")
                else:  # Python < 3.12 without the backported filter: refuse unsafe members
                    for member in archive.getmembers():
                        resolved = (tmp / member.name).resolve()
                        if (
                            not str(resolved).startswith(str(tmp.resolve()))
                            or member.issym()
                            or member.islnk()
                        ):
                            raise DataError(f"{path.name} holds an unsafe member: {member.name}")
                    archive.extractall(tmp)
        (tmp / ".imgclf-complete").write_text(str(path), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {path}: {error}") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


_visible_entries = visible_entries


def _data_root(folder: Path) -> Path:
    """Descend through single wrapper folders (archive/mnist_png/…, dataset/flowers/…) to where the
    data starts; a lone folder of images (one class) stays as it is, for a clear error."""
    inner = unwrap(folder)
    return inner if inner == folder or sub_folders(inner) else folder


def _idx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if re.search(r"-idx\d-ubyte(\.gz)?$", p.name))


def scan_source(
    source: str | Path,
    *,
    path_col: str | None = None,
    label_col: str | None = None,
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
        path = _data_root(path)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(TABLE_SUFFIXES):
            image_set = scan_table(path, path_col=path_col, label_col=label_col, classes=classes)
        elif re.search(r"-idx\d-ubyte(\.gz)?$", name):
            image_set = scan_idx([path], classes=classes)
        else:
            raise UsageError(f"{path} is not a folder, CSV/TSV, archive (.zip/.tar/.tar.gz) or IDX file")
    else:
        layout = find_layout(path, splits)
        tables = [
            p for p in _visible_entries(path) if p.is_file() and p.name.lower().endswith(TABLE_SUFFIXES)
        ]
        if layout.splits:
            image_set = scan_split_folders(layout, classes=classes)
        elif _idx_files(path):
            image_set = scan_idx(_idx_files(path), classes=classes)
        elif len(tables) == 1:  # a single table beside the images is their label index
            image_set = scan_table(tables[0], path_col=path_col, label_col=label_col, classes=classes)
        elif any(p.is_dir() for p in _visible_entries(path)):
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


def _order_classes(found: Sequence[str], classes: Sequence[str] | None, where: str) -> list[str]:
    if classes is None:
        return sort_classes(found)
    missing = [name for name in classes if name not in set(found)]
    if missing:
        raise DataError(f"class {missing[0]!r} given by --classes was not found in {where}")
    if len(set(classes)) != len(classes):
        raise UsageError("--classes lists a class twice")
    return list(classes)


def scan_class_folders(folder: Path, *, classes: Sequence[str] | None = None) -> ImageSet:
    """A folder whose sub-folders are classes; images may sit deeper inside a class folder."""
    dirs = _class_dirs(folder)
    names = _order_classes(list(dirs), classes, str(folder))
    problems: list[Problem] = [
        Problem(p.name, "non-image", "not an image file (skipped)")
        for p in _visible_entries(folder)
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
    names = _order_classes(list(found), classes, str(root))
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
    names = _order_classes({raw_labels[i] for i in keep}, classes, source)
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


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    except (OSError, struct.error, EOFError) as error:
        raise DataError(f"{path.name} is not a valid IDX file: {error}") from error
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise DataError(f"{path.name} is not a valid IDX file (bad magic number)")
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path.name} is truncated: expected {int(np.prod(dims))} values, found {array.size}")
    return array.reshape(dims)


def scan_idx(files: list[Path], *, classes: Sequence[str] | None = None) -> ImageSet:
    """MNIST-style IDX pairs (train-images-idx3-ubyte + train-labels-idx1-ubyte, t10k-… for test)."""
    image_files = [p for p in files if "-images-" in p.name or "idx3" in p.name]
    if not image_files and len(files) == 1:
        raise DataError(f"{files[0].name} holds labels; give the images file or the folder")
    all_images: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    split_of: list[str] = []
    for image_file in image_files:
        prefix = (
            image_file.name.split("-images-")[0]
            if "-images-" in image_file.name
            else image_file.name.split("-")[0]
        )
        label_candidates = [p for p in image_file.parent.iterdir() if p.name.startswith(f"{prefix}-labels-")]
        if not label_candidates:
            raise DataError(f"no labels file ({prefix}-labels-idx1-ubyte) next to {image_file.name}")
        images = _read_idx(image_file)
        labels = _read_idx(label_candidates[0]).reshape(-1)
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise DataError(
                f"{image_file.name} and its labels do not match ({images.shape} vs {labels.shape})"
            )
        all_images.append(images)
        all_labels.append(labels)
        split = "test" if prefix.lower() in ("t10k", "test", "testing") else "train"
        split_of += [split] * len(labels)
    images = np.concatenate(all_images)
    raw = np.concatenate(all_labels).astype(np.int64)
    image_set = from_arrays(images, raw, class_names=None, classes=classes, name=image_files[0].name)
    image_set.layout = "idx"
    image_set.splits = split_of if len(set(split_of)) > 1 else None
    split_names = ["test" if p.name.lower().startswith(("t10k", "test")) else "train" for p in image_files]
    image_set.description = "IDX files " + ", ".join(
        f"{p.name} → {split}" for p, split in zip(image_files, split_names)
    )
    return image_set


def from_arrays(
    images: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    name: str = "array",
) -> ImageSet:
    """Images (N, H, W[, C]) plus labels (integers, or class names) as an ImageSet."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4):
        raise DataError(f"images must be an array (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    if class_names is not None and np.issubdtype(labels.dtype, np.integer):
        label_names = [str(class_names[int(i)]) for i in labels]
    else:
        label_names = [str(v) for v in labels.tolist()]
    names = _order_classes(set(label_names), classes, name)
    if class_names is not None and classes is None:
        names = [str(c) for c in class_names if str(c) in set(label_names)]
    index_of = {n: i for i, n in enumerate(names)}
    selected = [i for i, n in enumerate(label_names) if n in index_of]
    keys = [f"array:{i}" for i in selected]
    mapped = np.asarray([index_of[label_names[i]] for i in selected], dtype=np.int64)
    return ImageSet(keys, mapped, names, ArrayReader(images, name), "arrays", name)


def _header_job(args: tuple[FileReader | ArrayReader, list[str]]) -> list[ImageHeader | str]:
    reader, keys = args
    results: list[ImageHeader | str] = []
    for key in keys:
        try:
            results.append(reader.header(key))
        except ImageDecodeError as error:
            results.append(str(error))
        except OSError as error:
            results.append(f"cannot read: {error}")
    return results


def file_list_digest(image_set: ImageSet) -> str | None:
    """A digest of the sample files: keys, sizes and modification times (None for arrays).

    Keys the caches of headers and decoded images: touch, replace, add or remove a file and the
    digest changes.
    """
    if not isinstance(image_set.reader, FileReader):
        return None
    if image_set.file_stats is None:  # stat each file once; subsets carry the results
        image_set.file_stats = [_file_stat(image_set.reader.location(key)) for key in image_set.keys]
    digest = hashlib.sha256()
    for key, stat in zip(image_set.keys, image_set.file_stats):
        digest.update(f"{key}\0{stat}\n".encode())
    return digest.hexdigest()


def _file_stat(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}\0{stat.st_mtime_ns}"


HEADER_CACHE_MIN = 1000  # smaller sets are read faster than a cache file is


def _load_header_cache(path: Path, count: int) -> list[ImageHeader | str] | None:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if len(rows) != count:
            return None
        return [row if isinstance(row, str) else ImageHeader(*row) for row in rows]
    except (OSError, ValueError, TypeError):
        return None


def _save_header_cache(path: Path, results: list[ImageHeader | str]) -> None:
    from imgclf.io import write_text_atomic

    rows = [r if isinstance(r, str) else list(r) for r in results]
    try:
        write_text_atomic(path, json.dumps(rows, separators=(",", ":")))
    except OSError as error:  # a read-only or full cache folder costs the next run a header pass
        logger.debug("could not keep the image headers in %s: %s", path, error)


def read_headers(image_set: ImageSet, workers: int = 0) -> ImageSet:
    """Open every image's header (in parallel processes for large sets); drop unreadable files.

    Returns a new ImageSet with `headers` filled and each unreadable file added to `problems`.
    For 1,000 files or more the results are kept in the cache folder (`headers/`), keyed by the
    files' names, sizes and modification times, so that the next run opens no file for them.
    """
    keys = image_set.keys
    cache_file = None
    if isinstance(image_set.reader, ArrayReader):
        results: list[ImageHeader | str] = _header_job((image_set.reader, keys))
    else:
        if len(keys) >= HEADER_CACHE_MIN:
            cache_file = cache_dir() / "headers" / f"{file_list_digest(image_set)[:32]}.json"
        cached = _load_header_cache(cache_file, len(keys)) if cache_file else None
        if cached is not None:
            results = cached
        else:
            chunk = 512
            jobs = [(image_set.reader, keys[i : i + chunk]) for i in range(0, len(keys), chunk)]
            if workers > 1 and len(jobs) > 2:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    results = [item for part in pool.map(_header_job, jobs) for item in part]
            else:
                results = [item for job in jobs for item in _header_job(job)]
            if cache_file is not None:
                _save_header_cache(cache_file, results)
    good = [i for i, result in enumerate(results) if isinstance(result, ImageHeader)]
    problems = list(image_set.problems)
    problems += [
        Problem(keys[i], "corrupt", str(result))
        for i, result in enumerate(results)
        if not isinstance(result, ImageHeader)
    ]
    kept = image_set.subset(good)
    kept.headers = [results[i] for i in good]  # type: ignore[misc]
    kept.problems = problems
    return kept


def load_label_map(path: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """Display names from a JSON file whose keys are class names or 1-based class indices."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"label map not found: {path}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(mapping, dict):
        raise UsageError(f"{path} must be a JSON object {{class: display name}}")
    mapping = {str(k): str(v) for k, v in mapping.items()}
    if any(name in mapping for name in classes):
        return {name: mapping.get(name, name) for name in classes}
    if all(k.isdigit() for k in mapping):
        return {name: mapping.get(str(i + 1), name) for i, name in enumerate(classes)}
    raise UsageError(f"{path}: its keys match neither the class names nor 1-based class indices")
