"""The fastai side of the benchmarks runs in its own virtual environment, never in imgclf's.

`fastai_python()` creates it on first use (in `$IMGCLF_BENCH_FASTAI_VENV`, default
`~/.cache/imgclf/bench/fastai-venv`) with fastai, and returns its python. So that both sides train the
same network from the same weights without a second 5 GB PyTorch, the environment sees imgclf's
environment's packages (torch, torchvision, timm and the offline EfficientNet-Lite0 weights) through
a .pth file, below its own. `run_fastai(...)` runs benchmarks/fastai_side.py there and returns its
JSON answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGES = ["fastai"]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import bench_venv, run_side  # noqa: E402


def fastai_python() -> Path:
    return bench_venv("IMGCLF_BENCH_FASTAI_VENV", "fastai-venv", PACKAGES, "fastai", share=True)


def run_fastai(*args: str, timeout: float | None = None) -> dict:
    """Run fastai_side.py with `args` in the fastai environment; its last stdout line is JSON."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return run_side(fastai_python(), HERE / "fastai_side.py", args, env, timeout)
