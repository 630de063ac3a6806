"""Archives (.zip, .tar, .tar.gz …) unpacked once into the cache folder, keyed by their content.

An archive is anyone's file, so before anything is written its members are counted and their
declared sizes summed against a budget: no more than ARCHIVE_MAX_RATIO times the archive's own size
(photos barely compress; a bomb compresses hundreds of times), no more than ARCHIVE_DISK_SHARE of
the free disk, and no more than ARCHIVE_MAX_MEMBERS members. `imgclf --archive-budget-gb GB` (or
IMGCLF_ARCHIVE_BUDGET_GB) sets the size allowed instead (the disk share still holds). Each unpack
goes into a private temporary folder that is renamed into place once, so two processes unpacking
the same archive never remove each other's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from imgclf.errors import DataError
from imgclf.paths import cache_dir

logger = logging.getLogger(__name__)


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# the budget of one archive (see the module docstring); MNIST's zip holds 70,002 members, stored
ARCHIVE_MAX_RATIO = 50
ARCHIVE_MIN_BUDGET = 256 * 2**20  # small archives of anything may unpack to this much
ARCHIVE_DISK_SHARE = 0.5
ARCHIVE_MAX_MEMBERS = 1_000_000
ARCHIVE_BUDGET_VARIABLE = "IMGCLF_ARCHIVE_BUDGET_GB"
COMPLETE_MARKER = ".imgclf-complete"
STALE_SECONDS = 24 * 3600  # temporary unpack folders older than this were left by a killed process


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def declared_contents(path: Path, budget: float = float("inf")) -> tuple[int, int, bool]:
    """(members, bytes their headers declare, whether that is all of them) of an archive, read
    without unpacking anything. A zip's central directory lists every member at once. A tar's
    headers are read one at a time (never `getmembers()`), and the reading stops at the first
    header that takes the declared bytes past `budget` or the members past ARCHIVE_MAX_MEMBERS: to
    reach the header behind it, the reader would decompress the data it declares (8 GiB of zeros
    fit in 10 KB of bz2). The reader is the one that unpacks (concatenated gzip, bz2 and xz streams
    included), so what is counted is what would be written."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
                return len(infos), sum(info.file_size for info in infos), True
        members = declared = 0
        with tarfile.open(path) as archive:
            for member in archive:  # each header as it is reached: nothing read ahead
                members += 1
                declared += member.size if member.isfile() else 0
                if declared > budget or members > ARCHIVE_MAX_MEMBERS:
                    return members, declared, False
        return members, declared, True
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise DataError(f"cannot unpack {path}: {error}") from error


def check_budget(path: Path, folder: Path) -> None:
    """A DataError with the numbers and the way out when the archive would unpack past its budget."""
    free = shutil.disk_usage(folder).free
    given = os.environ.get(ARCHIVE_BUDGET_VARIABLE)
    budget = (
        float(given) * 2**30 if given else max(ARCHIVE_MIN_BUDGET, ARCHIVE_MAX_RATIO * path.stat().st_size)
    )
    budget = min(budget, ARCHIVE_DISK_SHARE * free)
    members, declared, complete = declared_contents(path, budget)
    counted = f"{members:,} member{'s' if members != 1 else ''}"
    if not complete:
        counted = f"its first {counted}" if members > 1 else "its first member"
    if members > ARCHIVE_MAX_MEMBERS:
        many = f"{members:,}" if complete else f"more than {ARCHIVE_MAX_MEMBERS:,}"
        raise DataError(
            f"{path.name} holds {many} members, over the limit of {ARCHIVE_MAX_MEMBERS:,}: "
            "unpack it yourself and give the folder"
        )
    if declared > budget:
        ratio = declared / max(1, path.stat().st_size)
        raise DataError(
            f"{path.name} declares {'at least ' * (not complete)}{declared / 2**20:,.0f} MiB in {counted} "
            f"({ratio:,.0f}× its size), over its budget of "
            f"{budget / 2**20:,.0f} MiB ({ARCHIVE_MAX_RATIO}× the archive, at least "
            f"{ARCHIVE_MIN_BUDGET / 2**20:,.0f} MiB, at most half the free disk); "
            "imgclf --archive-budget-gb GB allows more, or unpack it yourself"
        )


def _remove_stale(folder: Path) -> None:
    now = time.time()
    for entry in folder.glob(".*.unpacking"):
        try:
            if now - entry.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def unpack_archive(path: Path) -> Path:
    """Unpack an archive once into the cache (keyed by its content's SHA-256) and return the folder.

    A second call with the same archive content returns the existing folder without unpacking; the
    budget (`check_budget`) is checked before anything is written.
    """
    digest = _file_sha256(path)
    target = cache_dir() / "archives" / digest
    if (target / COMPLETE_MARKER).exists():
        logger.info("using unpacked %s from the cache: %s", path.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent)
    check_budget(path, target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", suffix=".unpacking", dir=target.parent))
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
        (tmp / COMPLETE_MARKER).write_text(digest, encoding="utf-8")
        if target.exists() and not (target / COMPLETE_MARKER).exists():
            shutil.rmtree(target, ignore_errors=True)  # an unpack from before the marker was written last
        try:
            os.rename(tmp, target)  # never over another process's finished folder
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: use its folder
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {path}: {error}") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
