"""Accuracy against the time limit: the same zero-flag run with `--time-limit` from 1 to 10 minutes,
each a fresh process with an empty cache folder, to show that the result grows with the time given
(no drop as the time grows, no jump from a small change in it).

    python benchmarks/time_limit_curve.py DATA [--limits 1,2,3,4,5,6,8,10] [--workdir DIR]

DATA: a folder, a zip, or `archive.zip:N` (N images per class, seeded), e.g.
`../shared/datasets/flowers5.zip:250`. Prints the machine and one row per limit: validation and test
accuracy, wall seconds, the fine-tuning epochs run and planned, and why fine-tuning ended.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine
from time_to_accuracy import run_imgclf
from zero_flag import cpu_flags, subset


def run(data: Path, minutes: float, workdir: Path) -> dict:
    """One zero-flag run with `--time-limit minutes` (`run_imgclf`), with the fine-tuning epochs it
    ran, the plan line's epochs and why fine-tuning ended."""
    row = run_imgclf(data, f"limit-{minutes:g}", workdir, None, ("--time-limit", f"{minutes:g}"))
    if "error" in row:
        return {"error": row["error"][0], "seconds": row["seconds"]}
    run_dir = row["run_dir"]
    with (run_dir / "metrics.csv").open(newline="") as handle:
        epochs = sum(1 for line in csv.DictReader(handle) if line["epoch"] != "0")
    output = " ".join((run_dir / "console.log").read_text(encoding="utf-8").split())
    plan = "no fine-tuning" if "no fine-tuning" in output else ""
    if "fine-tuning up to" in output:
        plan = "up to " + output.split("fine-tuning up to ", 1)[1].split(" epochs", 1)[0]
    lines = (run_dir / "summary.txt").read_text().splitlines()
    ended = next((line for line in lines if "stop" in line.lower()), "as planned")
    test = row["test_acc"] if row["test_acc"] is not None else float("nan")
    return {
        "val_acc": row["val_acc"],
        "test_acc": test,
        "seconds": row["seconds"],
        "epochs": epochs,
        "plan": plan,
        "ended": ended.split(":", 2)[1].strip() if ended.count(":") >= 2 else ended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder, zip, or zip:N (N images per class)")
    parser.add_argument("--limits", default="1,2,3,4,5,6,8,10", help="minutes, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-time-limit-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe_machine()}; CPU flags: {cpu_flags()}", flush=True)
    data = subset(args.data, workdir)
    print(f"{'limit min':>9} {'val_acc':>8} {'test_acc':>8} {'wall s':>7} {'epochs':>6} {'plan':>14}  ended")
    for minutes in (float(m) for m in args.limits.split(",")):
        row = run(data, minutes, workdir)
        if "error" in row:
            print(f"{minutes:>9g} error: {row['error'][:100]}", flush=True)
            continue
        print(
            f"{minutes:>9g} {row['val_acc']:>8.4f} {row['test_acc']:>8.4f} {row['seconds']:>7.1f} "
            f"{row['epochs']:>6} {row['plan']:>14}  {row['ended'][:90]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
