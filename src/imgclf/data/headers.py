"""Image headers (size, mode) of every sample, read in parallel once and kept in the cache folder
for data sets of HEADER_CACHE_MIN images or more."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from imgclf.data.decode import (
    ImageDecodeError,
    ImageHeader,
)
from imgclf.data.imageset import ArrayReader, FileReader, ImageSet, Problem
from imgclf.data.parquet import shard_of
from imgclf.paths import cache_dir

logger = logging.getLogger(__name__)


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
    """A file's size and modification time; a Parquet row's are its shard's."""
    try:
        stat = os.stat(shard_of(path) if "#" in path else path)
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
