"""`imgclf check --labels` against labels flipped on purpose: precision and recall of the flipped files
among the issues it finds, and its wall time.

    python benchmarks/label_issues.py ../shared/datasets/mnist_png.zip:500 \
        ../shared/datasets/flowers5.zip:250 --seeds 5

Each `archive.zip:N` keeps N images per class (seeded), then moves 5% of them (seeded) into another
class's folder; `find_label_issues` (the offline backbone's features, a 5-fold cross-fitted head,
confident learning) ranks the issues. Precision: flipped files among the issues it lists; recall:
listed files among the flipped; top-N: flipped files among the first N of its ranking, N the number
flipped (precision and recall at once).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine
from zero_flag import subset


def flip(folder: Path, share: float, seed: int = 0) -> set[str]:
    """Move `share` of the images into another class's folder; returns their new keys (class/name)."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = sorted(p for p in folder.glob("*/*") if p.is_file())
    chosen = rng.choice(len(files), size=round(share * len(files)), replace=False)
    flipped = set()
    for index in sorted(chosen.tolist()):
        source = files[index]
        target_class = rng.choice([c for c in classes if c != source.parent.name])
        target = folder / target_class / f"flipped_{source.name}"
        shutil.move(source, target)
        flipped.add(f"{target_class}/{target.name}")
    return flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="archive.zip:N (N images per class)")
    parser.add_argument("--share", type=float, default=0.05, help="share of the labels flipped")
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many flip seeds (0, 1, …)")
    args = parser.parse_args()
    from imgclf.data.headers import read_headers
    from imgclf.data.sources import scan_source
    from imgclf.features.label_issues import find_label_issues

    print(f"machine: {describe_machine()}")
    print(
        f"{'data':<22} {'seed':>4} {'images':>7} {'flipped':>8} {'listed':>7} {'precision':>10} "
        f"{'recall':>7} {'top-N':>7} {'seconds':>8}"
    )
    runs = [(spec, seed) for spec in args.data for seed in range(args.seeds)]
    results: dict[str, list[tuple[float, float, float]]] = {}
    for spec, seed in runs:
        with tempfile.TemporaryDirectory() as tmp:
            folder = subset(spec, Path(tmp))
            flipped = flip(folder, args.share, seed)
            started = time.perf_counter()
            image_set = read_headers(scan_source(folder))
            found = find_label_issues(image_set)
            seconds = time.perf_counter() - started
            listed = [issue.path for issue in found.issues]
            hits = len(set(listed) & flipped)
            top = set(listed[: len(flipped)])
            top_hits = len(top & flipped)
            print(
                f"{Path(spec).name:<22} {seed:>4} {len(image_set):>7,} {len(flipped):>8} {len(listed):>7} "
                f"{hits / max(1, len(listed)):>10.3f} {hits / len(flipped):>7.3f} "
                f"{top_hits / len(flipped):>7.3f} {seconds:>8.1f}"
            )
            results.setdefault(spec, []).append(
                (hits / max(1, len(listed)), hits / len(flipped), top_hits / len(flipped))
            )
    for spec, rows in results.items():
        if len(rows) > 1:
            mean, spread = np.mean(rows, axis=0), np.std(rows, axis=0)
            print(
                f"{Path(spec).name:<22} mean of {len(rows)} seeds: "
                f"precision {mean[0]:.3f} ± {spread[0]:.3f}, recall {mean[1]:.3f} ± {spread[1]:.3f}, "
                f"top-N {mean[2]:.3f} ± {spread[2]:.3f}"
            )


if __name__ == "__main__":
    main()
