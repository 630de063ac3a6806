"""The TensorFlow side of the benchmarks runs in its own virtual environment, never in imgclf's.

`tf_python()` creates it on first use (in `$IMGCLF_BENCH_TF_VENV`, default
`~/.cache/imgclf/bench/tf-venv`) with `tensorflow-cpu`, `tf-keras` (the Keras 2 API the tutorials
use: `tensorflow.keras.preprocessing.image.ImageDataGenerator`), SciPy and Pillow, and returns its
python. `run_keras(...)` runs benchmarks/keras_side.py there and returns its JSON answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGES = ["tensorflow-cpu", "tf-keras", "scipy", "pillow"]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import bench_venv, run_side  # noqa: E402


def tf_python() -> Path:
    return bench_venv("IMGCLF_BENCH_TF_VENV", "tf-venv", PACKAGES, "TensorFlow")


def run_keras(*args: str, timeout: float | None = None) -> dict:
    """Run keras_side.py with `args` in the TensorFlow environment; its last stdout line is JSON."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return run_side(tf_python(), HERE / "keras_side.py", args, env, timeout)
