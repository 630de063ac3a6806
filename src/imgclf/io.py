"""Atomic file writes: a reader sees the old file or the new one, never half of either, and what was
written survives a power loss (the file and its folder are flushed to disk before and after the
rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result over `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        fsync_path(Path(tmp))
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; a file system that cannot is left be."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _old_dir(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_dir(target: str | Path) -> None:
    """Put back a folder that `replace_dir_atomic` was interrupted in swapping: between its two
    renames the previous folder exists only as `.NAME.old`."""
    target = Path(target)
    old = _old_dir(target)
    if not target.exists() and old.is_dir():
        os.replace(old, target)
        fsync_path(target.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_dir_atomic(target: str | Path, fill: Callable[[Path], None]) -> None:
    """Build a folder next to `target` with `fill(tmp_dir)` and swap it in place of `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        mask = _umask()  # mkdtemp creates 0700, and some writers (safetensors) create 0600 files
        os.chmod(tmp, 0o777 & ~mask)
        for item in tmp.rglob("*"):
            if item.is_file():
                os.chmod(item, 0o666 & ~mask)
                fsync_path(item)
            elif item.is_dir():
                os.chmod(item, 0o777 & ~mask)
        fsync_path(tmp)
        if target.exists():
            old = _old_dir(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)  # a kill between the two renames: recover_dir puts `old` back
            fsync_path(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """One array → .npy content, several → .npz content, at exactly `path` (numpy would add a suffix)."""
    with path.open("wb") as handle:
        if len(arrays) == 1:
            np.save(handle, next(iter(arrays.values())))
        else:
            np.savez(handle, **arrays)
