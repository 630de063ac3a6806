"""The tutorial's MNIST job end to end: wall time until test accuracy reaches 0.9876, imgclf vs Keras.

    python benchmarks/mnist_tutorial.py [--target 0.9876] [--keras-max-minutes 30] [--no-keras]

Both read the PNG folders of ../shared/datasets/mnist_png.zip (60,000 train, 10,000 test), train the
same network (conv 32-32-pool-64-64-pool-dense 512, dropout 0.5; 594,922 parameters) with the same
augmentation (rescale 1/255, width shift 0.3, zoom 0.2, horizontal flip) and report test accuracy
after every epoch, as the tutorial does (it validates on the test folder).

- imgclf: `imgclf train mnist_png/ --model cnn-basic --width-shift 0.3 --zoom 0.2 --hflip
  --val-split 0 --epochs 6 --batch-size 256 --lr 6e-3 --schedule onecycle` (AdamW, one-cycle;
  batch 256 trains ~20% more images/s than 128 on this CPU, and one-cycle gets there in fewer
  epochs than warm-up + cosine), from an empty cache folder, so that decoding counts. Its clock
  starts when the command starts (Python start-up, imports, listing, headers, decoding and model
  building count); an epoch's time is when its line appears on the command's output.
  `--recipe default` runs imgclf's defaults (batch 64, lr 2e-3, 10 epochs) instead.
- Both read the same unpacked PNG folders (the zip is unpacked once before the clock starts).
- Keras: the tutorial's code (ImageDataGenerator.flow_from_directory, Adam 1e-3, batch 32), stopped
  at the target or after `--keras-max-minutes`, in its own TensorFlow environment (tf_env.py); its
  clock starts after TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, describe_machine

EPOCH_LINE = re.compile(r"^\s*epoch (\d+)/\d+ ")
RECIPES = {
    "fast": ["--epochs", "6", "--batch-size", "256", "--lr", "6e-3", "--schedule", "onecycle"],
    "default": ["--epochs", "10"],
}


def run_imgclf(data: Path, recipe: str, folder: Path) -> dict:
    """Runs `imgclf train`; each epoch is timed when its line appears on the command's output."""
    env = dict(os.environ, IMGCLF_CACHE_DIR=str(folder / "cache"), COLUMNS="200")
    command = [
        sys.executable, "-m", "imgclf", "train", str(data), "--model", "cnn-basic",
        "--width-shift", "0.3", "--zoom", "0.2", "--hflip", "--val-split", "0", *RECIPES[recipe],
        "--project", str(folder / "runs"), "--name", "mnist",
    ]  # fmt: skip
    start = time.perf_counter()
    seen: dict[int, float] = {}
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            match = EPOCH_LINE.match(line)
            if match:
                seen[int(match.group(1))] = time.perf_counter() - start
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"imgclf train failed with exit status {child.returncode}")
    with (folder / "runs" / "mnist" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    history = [
        {"epoch": int(r["epoch"]), "since_start": seen[int(r["epoch"])], "test_acc": float(r["val_acc"])}
        for r in rows
    ]
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall": wall, "history": history, "peak_rss_mb": child_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.9876)
    parser.add_argument("--recipe", choices=list(RECIPES), default="fast", help="imgclf's settings")
    parser.add_argument("--keras-max-epochs", type=int, default=10)
    parser.add_argument("--keras-max-minutes", type=float, default=30.0)
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}", flush=True)
    from imgclf.data.archives import unpack_archive

    root = unpack_archive(SHARED / "mnist_png.zip") / "mnist_png"
    print(f"imgclf recipe {args.recipe}: {' '.join(RECIPES[args.recipe])}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        imgclf = run_imgclf(root, args.recipe, Path(folder))
    reached = next((h for h in imgclf["history"] if h["test_acc"] >= args.target), None)
    imgclf_time = reached["since_start"] if reached else None
    first = imgclf["history"][0]["since_start"]
    print(
        f"imgclf: {len(imgclf['history'])} epochs, wall {imgclf['wall']:.1f} s (epoch 1 ended at "
        f"{first:.1f} s, set-up included), peak RSS {imgclf['peak_rss_mb']:,.0f} MB",
        flush=True,
    )
    for h in imgclf["history"]:
        print(f"  epoch {h['epoch']:>2}  {h['since_start']:7.1f} s  test acc {h['test_acc']:.4f}")
    keras = None
    if not args.no_keras:
        from tf_env import run_keras

        from imgclf.data.archives import unpack_archive

        root = unpack_archive(SHARED / "mnist_png.zip") / "mnist_png"
        keras = run_keras(
            "tutorial", str(root / "train"), str(root / "test"), str(args.target),
            str(args.keras_max_epochs), str(args.keras_max_minutes * 60),
        )  # fmt: skip
        print(
            f"Keras: {len(keras['history'])} epochs, {keras['params']:,} parameters, "
            f"peak RSS {keras['peak_rss_mb']:,.0f} MB"
        )
        for h in keras["history"]:
            print(f"  epoch {h['epoch']:>2}  {h['elapsed']:7.1f} s  test acc {h['test_acc']:.4f}")
    print()
    header = f"{'pipeline':<10} {'time to ' + str(args.target):>18} {'best test acc':>14} {'s/epoch':>9}"
    print(header)
    print("-" * len(header))
    history = imgclf["history"]
    per_epoch = (history[-1]["since_start"] - history[0]["since_start"]) / max(1, len(history) - 1)
    shown = f"{imgclf_time:.1f} s" if imgclf_time else "not reached"
    best = max(h["test_acc"] for h in imgclf["history"])
    print(f"{'imgclf':<10} {shown:>18} {best:>14.4f} {per_epoch:>9.1f}")
    if keras:
        keras_time = keras["seconds_to_target"]
        last = keras["history"][-1]["elapsed"]
        shown = f"{keras_time:.1f} s" if keras_time else f"> {last:.0f} s (not reached)"
        per_epoch = last / len(keras["history"])
        print(f"{'Keras':<10} {shown:>18} {keras['best_test_acc']:>14.4f} {per_epoch:>9.1f}")
        if imgclf_time:
            bound = keras_time or last
            relation = "=" if keras_time else ">"
            verdict = "meets" if bound / imgclf_time >= 5 else "misses"
            print(
                f"\ntarget: imgclf reaches {args.target} >= 5x sooner than Keras: "
                f"{relation} {bound / imgclf_time:.1f}x ({verdict})"
            )


if __name__ == "__main__":
    main()
