"""Time to accuracy: imgclf's zero-flag run against fastai's `fine_tune`, side by side in one run.

    python benchmarks/time_to_accuracy.py DATA [DATA ...] [--sides imgclf,fastai] [--before SRC]
        [--fastai-epochs 4] [--repeat N] [--workdir DIR]

DATA: a folder, a zip, or `archive.zip:N` (N images per class, seeded), e.g.
`../shared/datasets/flowers5.zip:100` or `../shared/datasets/mnist_png.zip:200` (class folders of
N images each, drawn from the whole zip; imgclf then carves its own validation split);
`archive.zip:N:a,b` only those classes (`flowers5.zip:125:daisy,sunflower`: two classes the head
tells apart, where fine-tuning has little to fix).
`--make NAME` adds generated data sets nobody tuned on (see `make_data`).

Sides, each from an empty cache folder, on the same images:
- `imgclf`: `imgclf train DATA` with no flags, as a process; wall time of the whole command.
- `before`: the same command run from another imgclf source tree (`--before SRC`, e.g. a
  `git worktree` of an older commit), to measure a change side by side.
- `fastai`: fastai's `vision_learner` + `fine_tune(--fastai-epochs)` with its defaults
  (`Resize(224)`, `aug_transforms()`, batch 32) on the same backbone and offline weights, in its own
  environment (fastai_env.py), on the train/validation split imgclf wrote to manifest.csv (a test
  split is left out of both). Its time counts from building its data loaders.

`--repeat N` runs the imgclf side N times (each from an empty cache folder) and prints the spread of
its accuracy and wall time. Prints the machine and one row per (data, side): validation accuracy
(and test accuracy where the data has a test split), wall seconds, and against fastai the accuracy
difference and the time ratio; under each imgclf run, its phase table (the run folder's phases.csv)
in one line.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine
from zero_flag import cpu_flags, subset


def make_data(name: str, workdir: Path) -> Path:
    """Generated data sets with a layout and a kind of image that imgclf was not tuned on:
    - `sklearn-digits`: scikit-learn's 1,797 handwritten digits, 8×8 grey, as PNG class folders;
    - `lfw`: scikit-image's LFW subset, 100 faces and 100 non-faces, 25×25 grey."""
    from PIL import Image

    target = workdir / name
    if target.exists():
        return target
    if name == "sklearn-digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images * (255 / 16)).astype(np.uint8)
        labels = [str(label) for label in digits.target]
    elif name == "lfw":
        from skimage.data import lfw_subset

        faces = lfw_subset()
        images = (faces * 255).astype(np.uint8)
        labels = ["face"] * 100 + ["other"] * 100
    else:
        raise SystemExit(f"unknown generated data set {name!r}: sklearn-digits or lfw")
    for index, (pixels, label) in enumerate(zip(images, labels)):
        path = target / label / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return target


def summary_of(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / "summary.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def run_imgclf(
    data: Path, side: str, workdir: Path, before: Path | None, extra: tuple[str, ...] = ()
) -> dict:
    """`imgclf train DATA` (plus `extra` flags) as a process from an empty cache folder: its metrics,
    wall seconds, run folder and phase table (an error line instead when it fails)."""
    name = f"{data.name}-{side}"
    env = {**os.environ, "IMGCLF_CACHE_DIR": str(workdir / f"cache-{name}"), "COLUMNS": "120"}
    if side == "before":
        env["PYTHONPATH"] = str(before)
    command = [sys.executable, "-m", "imgclf", "train", str(data), *extra]
    command += ["--project", str(workdir / "runs"), "--name", name]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    run_dir = workdir / "runs" / name
    if result.returncode != 0 or not (run_dir / "summary.txt").is_file():
        return {"error": result.stderr.strip().splitlines()[-1:] or ["?"], "seconds": seconds}
    (run_dir / "console.log").write_text(result.stderr + result.stdout, encoding="utf-8")
    summary = summary_of(run_dir)
    return {
        "val_acc": float(summary.get("val_acc", "nan")),
        "test_acc": float(summary["test_acc"]) if "test_acc" in summary else None,
        "best": summary.get("best epoch", "-").split(" ")[0],
        "seconds": seconds,
        "run_dir": run_dir,
        "phases": phases_of(run_dir),
    }


def phases_of(run_dir: Path) -> str:
    """The run's phase table (phases.csv) in one line: "start-up 2.2 s, scan 2.1 s, … epoch 3 11.5 s"."""
    path = run_dir / "phases.csv"
    if not path.is_file():
        return ""
    with path.open(newline="") as handle:
        rows = [(row["phase"].split(" (")[0], float(row["seconds"])) for row in csv.DictReader(handle)]
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in rows)


def split_lists(run_dir: Path, data: Path, workdir: Path) -> tuple[Path, Path]:
    """The run's train and validation splits as `path<TAB>label` files for the fastai side."""
    rows = list(csv.DictReader((run_dir / "manifest.csv").open()))
    lists = {}
    for split in ("train", "val"):
        path = workdir / f"{data.name}-{split}.tsv"
        lines = [f"{data / row['path']}\t{row['label']}" for row in rows if row["split"] == split]
        path.write_text("\n".join(lines) + "\n")
        lists[split] = path
    return lists["train"], lists["val"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="*", help="folder, zip, or zip:N (N images per class)")
    parser.add_argument("--make", action="append", default=[], help="generated: sklearn-digits, lfw")
    parser.add_argument("--sides", default="imgclf,fastai", help="imgclf, before, fastai (in this order)")
    parser.add_argument("--before", type=Path, help="the src/ folder of the imgclf to compare with")
    parser.add_argument("--fastai-epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="run the imgclf side this many times")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sides = []
    for side in args.sides.split(","):  # repeats of imgclf: imgclf, imgclf-2, …, each from empty caches
        sides += [side] + ([f"{side}-{n}" for n in range(2, args.repeat + 1)] if side == "imgclf" else [])
    if "before" in sides and args.before is None:
        parser.error("--sides before needs --before SRC")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-time-to-accuracy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe_machine()}; CPU flags: {cpu_flags()}", flush=True)
    datasets = [subset(spec, workdir) for spec in args.data] + [make_data(n, workdir) for n in args.make]
    header = f"{'data':<22} {'side':<7} {'val_acc':>8} {'test_acc':>8} {'wall s':>8} {'vs fastai':>22}"
    rows = []
    for data in datasets:
        results: dict[str, dict] = {}
        for side in sides:
            if side == "fastai":
                reference = next((r for r in results.values() if "run_dir" in r), None)
                if reference is None:
                    results[side] = {"error": ["needs an imgclf side first (its split)"], "seconds": 0.0}
                    continue
                from fastai_env import run_fastai

                train_list, val_list = split_lists(reference["run_dir"], data, workdir)
                started = time.perf_counter()
                answer = run_fastai(str(train_list), str(val_list), str(args.fastai_epochs))
                results[side] = {
                    "val_acc": answer["val_acc"],
                    "test_acc": None,
                    "seconds": answer["seconds"],
                    "process_seconds": time.perf_counter() - started,
                }
            else:
                results[side] = run_imgclf(data, side, workdir, args.before)
            row = results[side]
            shown = (
                f"error: {row['error'][0][:60]}"
                if "error" in row
                else f"{row['val_acc']:>8.4f} {row['test_acc'] if row['test_acc'] is not None else '-':>8} "
                f"{row['seconds']:>8.1f}"
            )
            print(f"  {data.name:<20} {side:<7} {shown}", flush=True)
            if row.get("phases"):
                print(f"    phases: {row['phases']}", flush=True)
        rows.append((data, results))
    print()
    print(header)
    print("-" * len(header))
    for data, results in rows:
        fastai = results.get("fastai")
        for side, row in results.items():
            if "error" in row:
                print(f"{data.name:<22} {side:<7} error: {row['error'][0][:80]}")
                continue
            test = f"{row['test_acc']:.4f}" if row.get("test_acc") is not None else "-"
            versus = ""
            if fastai is not None and "error" not in fastai and side != "fastai":
                versus = (
                    f"{(row['val_acc'] - fastai['val_acc']) * 100:+.1f} pts, "
                    f"{fastai['seconds'] / row['seconds']:.1f}× faster"
                )
            print(
                f"{data.name:<22} {side:<7} {row['val_acc']:>8.4f} {test:>8} {row['seconds']:>8.1f} "
                f"{versus:>22}"
            )
        repeats = [row for side, row in results.items() if side.startswith("imgclf") and "error" not in row]
        if len(repeats) > 1:
            accuracy = [row["val_acc"] for row in repeats]
            seconds = [row["seconds"] for row in repeats]
            print(
                f"{data.name:<22} imgclf × {len(repeats)}: val_acc {min(accuracy):.4f}–{max(accuracy):.4f} "
                f"(spread {(max(accuracy) - min(accuracy)) * 100:.1f} pts), wall {min(seconds):.1f}–"
                f"{max(seconds):.1f} s"
            )


if __name__ == "__main__":
    main()
