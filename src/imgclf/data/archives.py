"""Archives (.zip, .tar, .tar.gz …) unpacked once into the cache folder, keyed by their content."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from imgclf.errors import DataError
from imgclf.paths import cache_dir

logger = logging.getLogger(__name__)


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


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
