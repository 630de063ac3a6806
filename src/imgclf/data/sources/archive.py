"""A .zip, .tar, .tar.gz or .tar.xz file holding any other source, unpacked once into the cache.

The archive is unpacked into the cache folder, keyed by its content hash, within the archive budget
(`imgclf.data.archives`); what it holds is then read as any other source.
"""

from __future__ import annotations

from imgclf.data.archives import is_archive, unpack_archive
from imgclf.data.folders import data_root
from imgclf.data.imageset import ImageSet

PRIORITY = 0
NOUN = "an archive (.zip, .tar, .tar.gz)"
EDITS = None  # unpack it and review the folder


def recognise(query) -> bool:
    return query.path.is_file() and is_archive(query.path)


def scan(query) -> ImageSet:
    from imgclf.data.sources import scan_query

    folder = unpack_archive(query.path)
    return scan_query(query.again(data_root(folder) if folder.is_dir() else folder))
