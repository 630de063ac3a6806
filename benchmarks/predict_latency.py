"""Prediction speed on this machine: batch-1 latency and batch throughput, PyTorch eager vs ONNX Runtime.

    python benchmarks/predict_latency.py [--models cnn-basic efficientnet_lite0] [--seconds 3]

Each model is saved as an imgclf artifact, exported with `imgclf export`'s code (ONNX Runtime vs
PyTorch checked to 1e-4), and both backends are timed side by side on the same prepared inputs,
through `Predictor.predict_arrays` (what `imgclf predict` and `imgclf serve` call).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_MODELS, describe_machine, make_bench_artifact

from imgclf.export.onnx import export_onnx
from imgclf.inference.predictor import Predictor


def timed(function, seconds: float, minimum: int = 20) -> np.ndarray:
    """Per-call times (s) over about `seconds`, after warm-up calls."""
    for _ in range(5):
        function()
    times = []
    end = time.perf_counter() + seconds
    while len(times) < minimum or time.perf_counter() < end:
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BENCH_MODELS), choices=list(BENCH_MODELS))
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput rows")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}; torch threads {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            artifact = make_bench_artifact(name, Path(folder))
            check = export_onnx(artifact)
            eager = Predictor.from_path(artifact, backend="torch")
            fast = Predictor.from_path(artifact, backend="onnxruntime")
            spec = eager.spec
            rng = np.random.default_rng(0)
            one = rng.integers(0, 256, (1, spec.height, spec.width, spec.channels), dtype=np.uint8)
            many = rng.integers(0, 256, (args.batch, spec.height, spec.width, spec.channels), dtype=np.uint8)
            result = {"model": name, "check": check.max_abs_diff}
            for label, predictor in (("torch", eager), ("onnxruntime", fast)):
                single = timed(lambda p=predictor, x=one: p.predict_arrays(x), args.seconds)
                batch = timed(lambda p=predictor, x=many: p.predict_arrays(x), args.seconds, minimum=5)
                result[label] = (
                    np.median(single) * 1000,
                    np.percentile(single, 99) * 1000,
                    args.batch / np.median(batch),
                )
            rows.append(result)
    print()
    header = (
        f"{'model':<20} {'backend':<12} {'batch-1 p50 ms':>15} {'p99 ms':>9} "
        f"{f'batch-{args.batch} img/s':>16}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        for label in ("torch", "onnxruntime"):
            p50, p99, throughput = row[label]
            print(f"{row['model']:<20} {label:<12} {p50:>15.3f} {p99:>9.3f} {throughput:>16,.0f}")
        speedup = row["torch"][0] / row["onnxruntime"][0]
        batch_ratio = row["onnxruntime"][2] / row["torch"][2]
        print(
            f"{row['model']:<20} {'ratio':<12} {f'ORT {speedup:.2f}x faster':>15} {'':>9} "
            f"{f'ORT {batch_ratio:.2f}x':>16}   (export check max |dp| {row['check']:.1e})"
        )
    print()
    for row in rows:
        speedup = row["torch"][0] / row["onnxruntime"][0]
        verdict = "meets" if speedup >= 2 else "misses"
        print(
            f"target: batch-1 ONNX Runtime >= 2x faster than PyTorch eager, {row['model']}: "
            f"{speedup:.2f}x ({verdict})"
        )


if __name__ == "__main__":
    main()
