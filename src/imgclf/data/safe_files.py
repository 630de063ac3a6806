"""The file operations and rules every change to a user's data folder keeps (`imgclf.data.edits`
uses them): names a class folder may take, paths that stay inside the folder, a file's digest and
identity, free names, a copy that never replaces, a new file written whole or not at all, the folder's
lock, and the journal line a kill cut short."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from imgclf.errors import DataError, UsageError

MAX_NAME_BYTES = 255


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _libc_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl < 1.2.?)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _libc_renameat2()


def rename_no_replace(source: Path, target: Path, on_link: Callable[[], None] | None = None) -> None:
    """Rename `source` to `target`, refusing (FileExistsError) when `target` exists: atomic with
    renameat2(RENAME_NOREPLACE); where the file system lacks it, a hard link to `target` then an
    unlink of `source` (a kill between the two leaves both names of one file, which
    `FolderEdits` settles; `on_link` runs between them); os.rename on Windows, which never replaces."""
    if os.name == "nt":
        os.rename(source, target)
        return
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):  # else: no such call here
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    os.link(source, target, follow_symlinks=False)  # FileExistsError when taken
    if on_link is not None:
        on_link()
    os.unlink(source)


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a folder or file name in a data folder (one path component, not hidden,
    printable), or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "an empty name"
    if "/" in name or "\\" in name:
        return "a name holds no '/' or '\\' (one folder name)"
    if "\0" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a name holds no NUL or control characters"
    if name in (".", ".."):
        return f"{name!r} is not a name"
    if name.startswith("."):
        return "a name that starts with '.' is hidden, never read as a class"
    if name != name.strip():
        return "a name does not start or end with a space"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"a name is at most {MAX_NAME_BYTES} bytes"
    return None


def check_class_name(name: object) -> str:
    """`name` when it can be a class folder's name; else a UsageError that says why."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"class {name!r}: {problem}")
    return str(name)


def relative_problem(path: object) -> str | None:
    """Why `path` is not a plain relative path inside a folder (POSIX separators), or None."""
    if not isinstance(path, str) or not path:
        return "an empty path"
    if "\0" in path:
        return "a path holds no NUL"
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return "an absolute path, not one inside the data folder"
    if "\\" in path:
        return "a path inside the data folder is written with '/'"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a path inside the data folder has no empty, '.' or '..' part"
    return None


def resolved_inside(root: Path, path: Path) -> bool:
    """True when `path`, resolved (symlinks followed, as far as they exist), lies inside `root`."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved == root or root in resolved.parents


# --------------------------------------------------------------------------------------------------
# a rename that never replaces
# --------------------------------------------------------------------------------------------------


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (the first 32 hex digits): the image's identity across moves."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def _identity(path: Path) -> list[int]:
    stat = path.stat(follow_symlinks=False)
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _same_file(first: Path, second: Path) -> bool:
    """Two names of one file (not following symbolic links: a moved link is the link itself)."""
    try:
        one, other = os.lstat(first), os.lstat(second)
    except OSError:
        return False
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _free_name(wanted: PurePosixPath, tag: str, attempt: int) -> PurePosixPath:
    """`wanted`, else `stem-<tag>`, else `stem-<tag>-2` … (attempt 0, 1, 2 …)."""
    if attempt == 0:
        return wanted
    suffix = f"-{tag}" if tag else ""
    if attempt > 1 or not tag:
        suffix += f"-{attempt}"
    return wanted.with_name(f"{wanted.stem}{suffix}{wanted.suffix}")


# --------------------------------------------------------------------------------------------------
# the journal
# --------------------------------------------------------------------------------------------------


def cut_short(path: Path) -> None:
    """Drop a last line that a killed process left half written (no newline after it), so that the
    next line appended starts a line of its own. Such a line announced nothing that was done: a
    change is made only after its line is whole."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(max(0, size - 65_536))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return
        end = tail.rfind(b"\n")
        if end < 0 and size > len(tail):  # a line longer than 64 KiB: no journal line is
            raise DataError(f"{path} ends in a line of over 64 KiB; it is not imgclf's")
        handle.truncate(size - len(tail) + end + 1)
        os.fsync(handle.fileno())


def _digest_or_none(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None


def _copy_exclusive(source: Path, target: Path) -> str:
    """Copy `source`'s bytes into a new file `target` (never an existing one), flushed; returns the
    digest of what was written."""
    digest = hashlib.sha256()
    handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(source, "rb") as reader:
            for block in iter(lambda: reader.read(1 << 20), b""):
                digest.update(block)
                os.write(handle, block)
        os.fsync(handle)
    except BaseException:
        os.close(handle)
        os.unlink(target)
        raise
    os.close(handle)
    return digest.hexdigest()[:32]
