"""What to predict: files, folders and globs expanded lazily, and one machine's shard of them."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from imgclf.data.decode import is_image
from imgclf.data.parquet import PARQUET_SUFFIX, shard_rows
from imgclf.errors import UsageError


def iter_inputs(inputs: Sequence[str | Path]) -> Iterator[str]:
    """Files as given; folders → their image files (recursively, sorted); globs → their matches; a
    Parquet shard (given, or in a folder) → its rows, each named `<shard>#<row>`.

    A generator, so that a folder of millions of images is never listed in memory at once. A path
    that matches nothing is kept, so it gets an error row instead of vanishing.
    """
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            for directory, subdirs, files in os.walk(path):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                for name in sorted(files):
                    full = os.path.join(directory, name)
                    if name.lower().endswith(PARQUET_SUFFIX) and not name.startswith("."):
                        yield from shard_rows(full)
                    elif is_image(full):
                        yield full
        elif path.is_file() and text.lower().endswith(PARQUET_SUFFIX):
            yield from shard_rows(str(path))
        elif path.exists():
            yield str(path)
        elif glob.has_magic(text):
            matches = [
                m for m in sorted(glob.glob(text, recursive=True)) if Path(m).is_file() and is_image(m)
            ]
            yield from matches or [text]
        else:
            yield text


def parse_shard(text: str) -> tuple[int, int]:
    """ "2/4" → (2, 4): this machine takes every 4th input, starting with the 2nd."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes I/N, e.g. 1/4, got {text!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text}: I must be between 1 and N")
    return index, count


def select_shard(paths: Iterable[str], index: int, count: int) -> Iterator[str]:
    """The inputs of shard `index` of `count` (1-based), by position in the input order."""
    for position, path in enumerate(paths):
        if position % count == index - 1:
            yield path
