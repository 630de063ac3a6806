"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        mask = _umask()  # mkdtemp creates 0700, and some writers (safetensors) create 0600 files
        os.chmod(tmp, 0o777 & ~mask)
        for item in tmp.iterdir():
            if item.is_file():
                os.chmod(item, 0o666 & ~mask)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
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
