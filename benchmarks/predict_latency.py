"""Prediction speed, size and memory of every export against PyTorch eager, side by side in one run.

    python benchmarks/predict_latency.py [--models cnn-basic efficientnet_lite0] [--seconds 3]
    python benchmarks/predict_latency.py --artifact runs/train/model   # a trained model, its own data

For each model: PyTorch eager, float32 ONNX, int8 ONNX (static, QDQ, per-channel; calibrated on 64
real images), the ORT format of the float graph and TFLite (when `imgclf[tflite]` is installed in
this environment). Each is timed in its own process on the same prepared inputs: batch-1 latency
(p50, p99), batch throughput, file size, and peak memory (max RSS of the process, and how much of
it came after imgclf and PyTorch were imported: the model and its runtime). Bench models have
untrained heads (speed does not depend on the weights), so their int8 graph is timed without
imgclf's agreement check; with --artifact the check runs as `imgclf export` runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_MODELS, bench_images, describe_machine, make_bench_artifact

FORMATS = ("torch", "onnx", "int8", "ort", "tflite")


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


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent
    that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, path: str, spec_file: str, seconds: float, batch: int) -> None:
    """Time one model file in this process and print one JSON line (the parent reads it)."""
    spec = json.loads(Path(spec_file).read_text())
    rng = np.random.default_rng(0)
    shape = (spec["height"], spec["width"], spec["channels"])
    one = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
    many = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    import torch  # noqa: F401  (every backend's process has imported what imgclf imports)

    from imgclf.inference.predictor import Predictor

    base = peak_rss_mb()
    if kind == "tflite":
        from imgclf.export.formats.tflite import tflite_probabilities

        content = Path(path).read_bytes()

        def run(arrays: np.ndarray) -> np.ndarray:
            return tflite_probabilities(content, arrays.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    else:
        predictor = Predictor.from_path(path, backend="torch" if kind == "torch" else "onnxruntime")
        run = predictor.predict_arrays
    single = timed(lambda: run(one), seconds)
    bulk = timed(lambda: run(many), seconds, minimum=5)
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "p50": float(np.median(single) * 1000),
                "p99": float(np.percentile(single, 99) * 1000),
                "throughput": batch / float(np.median(bulk)),
                "peak_mb": peak,
                "model_mb": peak - base,
            }
        )
    )


def prepared_images(name: str, spec, count: int) -> np.ndarray:
    """Real images (MNIST or flowers) prepared for the model, as float N×C×H×W in 0–1."""
    from PIL import Image

    from imgclf.data.preprocess import prepare_image

    arrays = [prepare_image(Image.open(io.BytesIO(blob)), spec) for blob in bench_images(name, count)]
    return np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def export_all(artifact: Path, name: str, folder: Path, checked: bool) -> dict[str, Path | str]:
    """Every format of one model in `folder` (a reason instead of a path where one could not be made)."""
    from imgclf.artifact import load_artifact
    from imgclf.errors import ModelError
    from imgclf.export.check_data import CheckImages
    from imgclf.export.exporter import _with_metadata, export_model
    from imgclf.export.formats.ort import convert_to_ort
    from imgclf.export.quantize import quantize_int8

    files: dict[str, Path | str] = {"torch": artifact}
    files["onnx"] = export_model(artifact, folder / f"{name}.onnx").path
    _, info = load_artifact(artifact)
    float_bytes = files["onnx"].read_bytes()
    if checked:
        try:
            result = export_model(artifact, folder / f"{name}.int8.onnx", quantize="int8")
            files["int8"] = result.path
            print(f"{name} int8 check: {result.quantization.describe()} (passed)")
        except ModelError as error:
            print(f"{name} int8 check refused the export: {error}")
            checked = False
    if not checked:
        calibration = CheckImages(
            prepared_images(name if name in BENCH_MODELS else "efficientnet_lite0", info.preprocessing, 64),
            None,
            "64 real images",
        )
        int8 = quantize_int8(float_bytes, calibration)
        files["int8"] = folder / f"{name}.int8.onnx"
        files["int8"].write_bytes(_with_metadata(int8, info, "benchmark"))
    files["ort"] = folder / f"{name}.ort"
    files["ort"].write_bytes(convert_to_ort(float_bytes))
    if importlib.util.find_spec("litert_torch") is not None:
        files["tflite"] = export_model(artifact, folder / f"{name}.tflite", format="tflite").path
    else:
        files["tflite"] = "not installed (pip install 'imgclf[tflite]')"
    return files


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e6
    return path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BENCH_MODELS), choices=list(BENCH_MODELS))
    parser.add_argument("--artifact", type=Path, help="a trained model folder instead of the bench models")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput rows")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "PATH", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.seconds, args.batch)
        return
    import torch

    print(f"machine: {describe_machine()}; torch threads {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.artifact:  # named by its run folder
            models = [(args.artifact.resolve().parent.name, args.artifact)]
        else:
            models = [(name, None) for name in args.models]
        for name, artifact in models:
            artifact = artifact or make_bench_artifact(name, folder)
            files = export_all(artifact, name, folder, checked=args.artifact is not None)
            from imgclf.artifact import load_artifact

            spec_file = folder / f"{name}.spec.json"
            spec_file.write_text(json.dumps(load_artifact(artifact)[1].preprocessing.to_dict()))
            for kind in FORMATS:
                target = files[kind]
                if isinstance(target, str):
                    rows.append((name, kind, None, target))
                    continue
                command = [
                    sys.executable,
                    __file__,
                    "--seconds",
                    str(args.seconds),
                    "--batch",
                    str(args.batch),
                    "--worker",
                    kind,
                    str(target),
                    str(spec_file),
                ]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                rows.append((name, kind, json.loads(output.strip().splitlines()[-1]), size_mb(Path(target))))
    print()
    header = (
        f"{'model':<20} {'format':<8} {'size MB':>8} {'batch-1 p50 ms':>15} {'p99 ms':>8} "
        f"{f'batch-{args.batch} img/s':>15} {'peak RSS MB':>12} {'of it the model':>16}"
    )
    print(header)
    print("-" * len(header))
    for name, kind, result, size in rows:
        if result is None:
            print(f"{name:<20} {kind:<8} {size}")
            continue
        print(
            f"{name:<20} {kind:<8} {size:>8.2f} {result['p50']:>15.3f} {result['p99']:>8.3f} "
            f"{result['throughput']:>15,.0f} {result['peak_mb']:>12,.0f} {result['model_mb']:>16,.0f}"
        )
    print()
    by = {(name, kind): (result, size) for name, kind, result, size in rows}
    for name in dict.fromkeys(row[0] for row in rows):
        torch_p50 = by[(name, "torch")][0]["p50"]
        float_result, float_size = by[(name, "onnx")]
        int8_result, int8_size = by[(name, "int8")]
        print(
            f"{name}: int8 {float_size / int8_size:.2f}x smaller than float32 ONNX; batch-1 int8 "
            f"{float_result['p50'] / int8_result['p50']:.2f}x the speed of float32 ONNX, "
            f"{torch_p50 / int8_result['p50']:.2f}x of PyTorch eager"
        )


if __name__ == "__main__":
    main()
