"""`imgclf check --labels` against labels flipped on purpose: precision and recall of the flipped files
among the issues it finds, and its wall time.

    python benchmarks/label_issues.py ../shared/datasets/mnist_png.zip:500 \
        ../shared/datasets/flowers5.zip:250 --seeds 5
    python benchmarks/label_issues.py mosaics:3000 digit-mosaics:2000 --seeds 3     # multi-label

Each `archive.zip:N` keeps N images per class (seeded), then moves 5% of them (seeded) into another
class's folder; `find_label_issues` (the offline backbone's features, a 5-fold cross-fitted head,
confident learning) ranks the issues. Precision: flipped files among the issues it lists; recall:
listed files among the flipped; top-N: flipped files among the first N of its ranking, N the number
flipped (precision and recall at once).

`mosaics:N` is the multi-label case: N mosaics of flowers5 photos as `benchmarks/multi_label.py`
builds them (labels.csv, labels joined by spaces), `digit-mosaics:N` N mosaics of 1–4 MNIST digits
in a 2×2 grid (56 px, 10 labels, one in ten empty); in 5% of them (seeded) one label is changed,
half the time one of its labels dropped (when it has one; a "missing" label), otherwise a label it
lacks added (an "extra" one). Precision and recall count images as above; the last columns give,
of the changed labels, the share found as exactly that pair (image, label, missing or extra).
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
from common import SHARED, describe_machine
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


def change_labels(table: Path, share: float, seed: int = 0) -> dict[str, tuple[str, bool]]:
    """Change one label of `share` of a mosaic table's rows (drop one, or add one it lacks);
    returns image → (label, whether it was dropped, i.e. is now missing)."""
    import csv

    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader(table.open()))
    names = sorted({label for row in rows for label in row["tags"].split()})
    changed: dict[str, tuple[str, bool]] = {}
    for index in sorted(rng.choice(len(rows), size=round(share * len(rows)), replace=False).tolist()):
        row = rows[index]
        present = row["tags"].split()
        if present and rng.random() < 0.5:
            label = present[int(rng.integers(len(present)))]
            present.remove(label)
            changed[row["image"]] = (label, True)
        else:
            absent = [n for n in names if n not in present]
            label = absent[int(rng.integers(len(absent)))]
            present.append(label)
            changed[row["image"]] = (label, False)
        row["tags"] = " ".join(sorted(present))
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return changed


def digit_mosaics(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` mosaics of 1–4 MNIST training digits in a 2×2 grid (one in ten empty), labelled with
    the digits present, as labels.csv (labels joined by spaces) beside images/."""
    import io
    import zipfile

    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(SHARED / "mnist_png.zip") as archive:
        by_digit: dict[str, list[str]] = {}
        for name in archive.namelist():
            if name.endswith(".png") and "/train/" in name:
                by_digit.setdefault(name.split("/")[-2], []).append(name)
        digits = sorted(by_digit)
        rows = ["image,tags"]
        for index in range(count):
            mosaic, present = Image.new("L", (56, 56)), set()
            for cell in rng.permutation(4)[: 0 if rng.random() < 0.1 else int(rng.integers(1, 5))]:
                digit = digits[int(rng.integers(len(digits)))]
                member = by_digit[digit][int(rng.integers(len(by_digit[digit])))]
                mosaic.paste(
                    Image.open(io.BytesIO(archive.read(member))), ((cell % 2) * 28, (cell // 2) * 28)
                )
                present.add(digit)
            mosaic.save(folder / "images" / f"{index:05d}.png")
            rows.append(f"images/{index:05d}.png,{' '.join(sorted(present))}")
    table = folder / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def check_mosaics(
    spec: str, share: float, seed: int, tmp: Path
) -> tuple[int, set[str], list[str], float, str]:
    """(images, the changed images' keys, the listed images' keys, seconds, what it found of the
    changed pairs) of one multi-label run."""
    from multi_label import build

    from imgclf.data.headers import read_headers
    from imgclf.data.sources import scan_source
    from imgclf.features.label_issues import find_label_issues

    kind, count = spec.split(":")
    table = digit_mosaics(tmp, int(count)) if kind == "digit-mosaics" else build(tmp, int(count), seed=0)[0]
    changed = change_labels(table, share, seed)
    started = time.perf_counter()
    image_set = read_headers(scan_source(table))
    found = find_label_issues(image_set)
    seconds = time.perf_counter() - started
    pairs = {(i.path, name, True) for i in found.issues for name in i.missing}
    pairs |= {(i.path, name, False) for i in found.issues for name in i.extra}
    missing = {(path, label, True) for path, (label, dropped) in changed.items() if dropped}
    extra = {(path, label, False) for path, (label, dropped) in changed.items() if not dropped}
    text = f"missing {len(pairs & missing)}/{len(missing)}, extra {len(pairs & extra)}/{len(extra)}"
    return len(image_set), set(changed), [i.path for i in found.issues], seconds, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", nargs="+", help="archive.zip:N (N images per class), mosaics:N or digit-mosaics:N"
    )
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
            text = ""
            if spec.startswith(("mosaics:", "digit-mosaics:")):
                images, wrong, listed, seconds, text = check_mosaics(spec, args.share, seed, Path(tmp))
                text = f"   changed pairs found: {text}"
            else:
                folder = subset(spec, Path(tmp))
                wrong = flip(folder, args.share, seed)
                started = time.perf_counter()
                image_set = read_headers(scan_source(folder))
                found = find_label_issues(image_set)
                seconds = time.perf_counter() - started
                images, listed = len(image_set), [issue.path for issue in found.issues]
        hits, top_hits = len(set(listed) & wrong), len(set(listed[: len(wrong)]) & wrong)
        scores = (hits / max(1, len(listed)), hits / len(wrong), top_hits / len(wrong))
        print(
            f"{Path(spec).name:<22} {seed:>4} {images:>7,} {len(wrong):>8} {len(listed):>7} "
            f"{scores[0]:>10.3f} {scores[1]:>7.3f} {scores[2]:>7.3f} {seconds:>8.1f}{text}"
        )
        results.setdefault(spec, []).append(scores)
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
