"""Where imgclf may write besides the run folder: its cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: $IMGCLF_CACHE_DIR, else $XDG_CACHE_HOME/imgclf, else ~/.cache/imgclf."""
    if env := os.environ.get("IMGCLF_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgclf"
