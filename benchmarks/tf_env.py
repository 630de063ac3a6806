"""The TensorFlow side of the benchmarks runs in its own virtual environment, never in imgclf's.

`tf_python()` creates it on first use (in `$IMGCLF_BENCH_TF_VENV`, default
`~/.cache/imgclf/bench/tf-venv`) with `tensorflow-cpu`, `tf-keras` (the Keras 2 API the tutorials
use: `tensorflow.keras.preprocessing.image.ImageDataGenerator`), SciPy and Pillow, and returns its
python. `run_keras(...)` runs benchmarks/keras_side.py there and returns its JSON answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

PACKAGES = ["tensorflow-cpu", "tf-keras", "scipy", "pillow"]
HERE = Path(__file__).resolve().parent


def tf_python() -> Path:
    from imgclf.paths import cache_dir

    folder = Path(os.environ.get("IMGCLF_BENCH_TF_VENV", cache_dir() / "bench" / "tf-venv"))
    python = folder / "bin" / "python"
    marker = folder / ".imgclf-ready"
    if not marker.is_file():
        print(f"creating the TensorFlow environment in {folder} (one time, a few minutes)", flush=True)
        venv.create(folder, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        marker.write_text("ok")
    return python


def run_keras(*args: str, timeout: float | None = None) -> dict:
    """Run keras_side.py with `args` in the TensorFlow environment; its last stdout line is JSON."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [str(tf_python()), str(HERE / "keras_side.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise RuntimeError(f"keras_side.py {' '.join(args)} failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])
