"""Every data source becomes one `ImageSet`: sample keys, integer labels, ordered class names, the
split the layout gave (if any), a reader for the pixels, and the problems found on the way.

Each kind of source is one module of this package, found by file name (`SOURCES`), tried in the
order of its `PRIORITY`; the first whose `recognise(query)` says yes scans the data with
`scan(query)`. A source module declares, as literals read without importing it:

- `PRIORITY`: lower is tried first (an archive before anything, split folders before class folders);
- `NOUN`: what the user gives, in the phrase every "what can I give" message is made of
  ("a CSV/TSV table");
- `EDITS`: how `imgclf review --apply` carries out decisions on it: "folders" (files move between
  class folders), "table" (a reviewed copy of the table), or None (it cannot be changed in place);

and `recognise(query) -> bool` and `scan(query) -> ImageSet`. A `SourceQuery` holds the path and
the user's options, and what sources ask about a folder (its layout, its tables), found once.
A pandas DataFrame and numpy arrays are read by `imgclf.data.prepared.load_data` directly.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from imgclf.data.folders import data_root
from imgclf.data.imageset import ImageSet
from imgclf.data.layout import FolderLayout, find_layout, visible_entries
from imgclf.data.tables import TABLE_SUFFIXES
from imgclf.errors import DataError, UsageError
from imgclf.registry import DATA_SOURCES, Entry

logger = logging.getLogger(__name__)

SOURCES = DATA_SOURCES


@dataclass
class SourceQuery:
    """A path given as data, the user's options for reading it, and what the sources ask about it."""

    path: Path
    path_col: str | None = None
    label_col: str | None = None
    images: str | Path | None = None
    multi_label: bool | None = None
    classes: Sequence[str] | None = None
    splits: str | None = "auto"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def table_options(self) -> dict[str, Any]:
        """The options a table is read with (`scan_table`'s keywords)."""
        return {
            "path_col": self.path_col,
            "label_col": self.label_col,
            "classes": self.classes,
            "images": self.images,
            "multi_label": self.multi_label,
        }

    @property
    def layout(self) -> FolderLayout:
        """The folder's layout (split folders found by structure and names, or class folders)."""
        if "layout" not in self._cache:
            self._cache["layout"] = find_layout(self.path, self.splits)
        return self._cache["layout"]

    @property
    def tables(self) -> list[Path]:
        """The CSV/TSV files directly in the folder."""
        if "tables" not in self._cache:
            entries = visible_entries(self.path)
            self._cache["tables"] = [
                p for p in entries if p.is_file() and p.name.lower().endswith(TABLE_SUFFIXES)
            ]
        return self._cache["tables"]

    def again(self, path: Path) -> SourceQuery:
        """The same options for another path (what an archive holds)."""
        return SourceQuery(
            path, self.path_col, self.label_col, self.images, self.multi_label, self.classes, self.splits
        )


def source_entries() -> list[Entry]:
    """The data sources, in the order they are tried."""
    return sorted(SOURCES.entries().values(), key=lambda entry: entry.declared.get("PRIORITY", 100))


def sources_phrase() -> str:
    """What a user may give as data, in words made of the sources' nouns ("a folder of class folders,
    …, or IDX files")."""
    nouns = [entry.declared["NOUN"] for entry in source_entries() if entry.declared.get("NOUN")]
    return ", ".join(nouns[:-1]) + f" or {nouns[-1]}" if len(nouns) > 1 else "".join(nouns)


@functools.cache
def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def recognise_source(query: SourceQuery) -> Entry | None:
    """The first source, in priority order, that recognises the query's path."""
    for entry in source_entries():
        if _module(entry.module).recognise(query):
            return entry
    return None


def as_image_set(data: str | Path | ImageSet, **options: Any) -> ImageSet:
    """`data` itself when it is already scanned, else `scan_source(data, **options)`."""
    return data if isinstance(data, ImageSet) else scan_source(data, **options)


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
    query = source_query(source, path_col, label_col, images, multi_label, classes, splits)
    image_set = scan_query(query)
    image_set.source = str(Path(source).expanduser())
    return image_set


def source_query(source: str | Path, *args: Any) -> SourceQuery:
    """The query of a path given as data (a folder is read from the folder that holds the data);
    a UsageError naming what may be given when there is nothing there."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"data not found: {path} (give {sources_phrase()})")
    return SourceQuery(data_root(path) if path.is_dir() else path, *args)


def scan_query(query: SourceQuery) -> ImageSet:
    """The image set of the first source that recognises the query; one clear error if none does."""
    entry = recognise_source(query)
    if entry is None:
        if query.path.is_file():
            raise UsageError(f"{query.path} is none of what imgclf reads: {sources_phrase()}")
        raise DataError(f"{query.path} holds none of what imgclf reads: {sources_phrase()}")
    return _module(entry.module).scan(query)


def data_edits(data: str | Path, splits: str | None = "auto") -> str | None:
    """How `review --apply` may change this data: "folders", "table" or None (the source's `EDITS`)."""
    entry = recognise_source(source_query(data, None, None, None, None, None, splits))
    return entry.declared.get("EDITS") if entry is not None else None
