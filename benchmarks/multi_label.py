"""Multi-label training with no flags, on mosaics of real flower photos, against two references.

Each mosaic holds 1–4 flowers5 photos in a 2×2 grid (the other cells black; about one in ten holds
none: "none of these"), labelled with the set of flower classes present. The photos are split into
train, val and test first (70/15/15 per class, seeded) and each split's mosaics are built from its
own photos only, so no photo is in two splits; the table's `split` column carries the split.

- **zero flags**: `imgclf train labels.csv` — what a new user gets (mAP, macro F1, subset accuracy,
  wall time), with the validation macro F1 at the chosen thresholds beside the test one.
- **tile by tile (upper reference)**: the single-label model trained with no flags on the same
  training photos, applied to each filled cell of a test mosaic (it is told where the photos are);
  a label's score is its highest probability over the cells, its answer the union of the cells'
  top classes.
- **one label per image (lower reference)**: the same single-label model on the whole mosaic,
  answering its one top class (its probabilities as the label scores).

Targets: zero-flag macro F1 within 5 points of tile by tile, mAP ≥ 0.90, and the test macro F1
within 3 points of the validation one at the thresholds chosen on validation.

    python benchmarks/multi_label.py                   # 3,000 mosaics (2,100 / 450 / 450)
    python benchmarks/multi_label.py --mosaics 600     # a quick look
    python benchmarks/multi_label.py --also "--time-limit 14"   # and a run with these flags beside it
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, describe_machine
from zero_flag import cpu_flags

TILE = 112  # a cell's side: the mosaic is 224 px, the model's own size
SHARES = {"train": 0.70, "val": 0.15, "test": 0.15}


def split_photos(archive: zipfile.ZipFile, seed: int) -> dict[str, dict[str, list[str]]]:
    """split → class → member names, 70/15/15 per class."""
    by_class: dict[str, list[str]] = {}
    for name in archive.namelist():
        if name.lower().endswith(".jpg"):
            by_class.setdefault(name.split("/")[-2], []).append(name)
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[str, list[str]]] = {split: {} for split in SHARES}
    for label, members in sorted(by_class.items()):
        members = list(rng.permutation(sorted(members)))
        train_end = round(SHARES["train"] * len(members))
        val_end = train_end + round(SHARES["val"] * len(members))
        splits["train"][label] = members[:train_end]
        splits["val"][label] = members[train_end:val_end]
        splits["test"][label] = members[val_end:]
    return splits


def build(workdir: Path, mosaics: int, seed: int) -> tuple[Path, Path, list[str], dict[str, list]]:
    """The mosaics with labels.csv (split column), and the training photos as class folders for
    the single-label model; returns (table, photo folder, classes, test cells per mosaic)."""
    table = workdir / "mosaics" / "labels.csv"
    photos = workdir / "photos"
    rng = np.random.default_rng(seed)
    cells: dict[str, list] = {}  # test mosaic → [(cell, class index)]
    with zipfile.ZipFile(SHARED / "flowers5.zip") as archive:
        splits = split_photos(archive, seed)
        classes = sorted(splits["train"])
        (workdir / "mosaics" / "images").mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):  # the single-label model's own splits
            for label, members in splits[split].items():
                folder = photos / split / label
                folder.mkdir(parents=True, exist_ok=True)
                for member in members:
                    (folder / Path(member).name).write_bytes(archive.read(member))
        rows = ["image,tags,split"]
        for split, share in SHARES.items():
            for index in range(round(mosaics * share)):
                mosaic = Image.new("RGB", (2 * TILE, 2 * TILE))
                filled = 0 if rng.random() < 0.1 else int(rng.integers(1, 5))
                present, placed = set(), []
                for cell in rng.permutation(4)[:filled]:
                    label = int(rng.integers(len(classes)))
                    pool = splits[split][classes[label]]
                    member = pool[int(rng.integers(len(pool)))]
                    photo = Image.open(io.BytesIO(archive.read(member))).convert("RGB").resize((TILE, TILE))
                    mosaic.paste(photo, ((cell % 2) * TILE, (cell // 2) * TILE))
                    present.add(classes[label])
                    placed.append((int(cell), label))
                name = f"{split}_{index:05d}.jpg"
                mosaic.save(workdir / "mosaics" / "images" / name, quality=92)
                rows.append(f"images/{name},{' '.join(sorted(present))},{split}")
                if split == "test":
                    cells[f"images/{name}"] = placed
        table.write_text("\n".join(rows) + "\n")
    return table, photos, classes, cells


def train(data: Path, workdir: Path, name: str, flags: list[str] = ()) -> tuple[Path, float, str]:
    """`imgclf train DATA` with no flags (or `flags`); the run folder, its wall time and what it printed."""
    env = {**os.environ, "IMGCLF_CACHE_DIR": str(workdir / f"cache-{name}"), "COLUMNS": "120"}
    command = ["imgclf", "train", str(data), *flags, "--project", str(workdir / "runs"), "--name", name]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    (workdir / "runs" / name / "console.log").write_text(result.stderr + result.stdout, encoding="utf-8")
    return workdir / "runs" / name, seconds, result.stderr


def scores(probabilities: np.ndarray, answers: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """mAP, macro F1 and subset accuracy of scores and 0/1 answers against the truth."""
    from imgclf.evaluation.multi_label import mean_average_precision

    truth = truth > 0
    f1 = []
    for j in range(truth.shape[1]):
        tp = float((answers[:, j] & truth[:, j]).sum())
        predicted, actual = float(answers[:, j].sum()), float(truth[:, j].sum())
        f1.append(2 * tp / max(predicted + actual, 1.0))
    return {
        "map": mean_average_precision(probabilities, truth.astype(np.float32)),
        "macro_f1": float(np.mean(f1)),
        "subset_acc": float((answers == truth).all(1).mean()),
    }


def references(
    model: Path, table: Path, classes: list[str], cells: dict[str, list]
) -> tuple[dict[str, float], dict[str, float], float]:
    """The single-label model tile by tile and on whole mosaics; and the seconds that took."""
    from imgclf.inference.predictor import Predictor

    predictor = Predictor.from_path(model, backend="torch")
    order = [predictor.classes.index(name) for name in classes]
    folder = table.parent
    names = sorted(cells)
    truth = np.zeros((len(names), len(classes)), np.uint8)
    tile_scores = np.zeros((len(names), len(classes)), np.float32)
    tile_answers = np.zeros((len(names), len(classes)), bool)
    started = time.perf_counter()
    tiles, owners = [], []
    for row, name in enumerate(names):
        image = Image.open(folder / name).convert("RGB")
        for cell, label in cells[name]:
            truth[row, label] = 1
            x, y = (cell % 2) * TILE, (cell // 2) * TILE
            tiles.append(image.crop((x, y, x + TILE, y + TILE)))
            owners.append(row)
    for owner, prediction in zip(owners, predictor.predict(tiles, top_k=len(classes))):
        probabilities = dict(zip(prediction.labels, prediction.probabilities))
        values = np.asarray([probabilities[predictor.classes[i]] for i in order], np.float32)
        tile_scores[owner] = np.maximum(tile_scores[owner], values)
        tile_answers[owner, int(np.argmax(values))] = True
    whole = predictor.predict([str(folder / name) for name in names], top_k=len(classes))
    whole_scores = np.zeros_like(tile_scores)
    for row, prediction in enumerate(whole):
        probabilities = dict(zip(prediction.labels, prediction.probabilities))
        whole_scores[row] = [probabilities[predictor.classes[i]] for i in order]
    whole_answers = whole_scores == whole_scores.max(axis=1, keepdims=True)
    seconds = time.perf_counter() - started
    return scores(tile_scores, tile_answers, truth), scores(whole_scores, whole_answers, truth), seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mosaics", type=int, default=3000, help="mosaics in all (70/15/15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the data and runs go (default: temp)"
    )
    parser.add_argument(
        "--also", default="", help='one more multi-label run with these flags, e.g. "--time-limit 14"'
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-multi-label-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe_machine()}; CPU flags: {cpu_flags()}", flush=True)
    table, photos, classes, cells = build(workdir, args.mosaics, args.seed)
    print(
        f"{args.mosaics:,} mosaics of {TILE}-px flowers5 cells in {workdir} (photos split first)", flush=True
    )

    run_dir, seconds, printed = train(table, workdir, "multi-label")
    model_metrics = json.loads((run_dir / "model" / "imgclf.json").read_text())["metrics"]
    guessed = [line.strip() for line in printed.splitlines() if "multi-label" in line][:1]
    print(f"zero flags: {seconds:.0f} s; {' '.join(guessed)[:200]}", flush=True)
    extra = None
    if args.also:
        also_dir, also_seconds, _ = train(table, workdir, "multi-label-also", args.also.split())
        extra = (also_dir, also_seconds)
    single_dir, single_seconds, _ = train(photos, workdir, "single-label")
    tile, whole, reference_seconds = references(single_dir, table, classes, cells)

    print()
    print(f"{'model (test split)':<44} {'mAP':>7} {'macro F1':>9} {'subset acc':>11} {'wall s':>8}")
    zero = {k: model_metrics[f"test_{k}"] for k in ("map", "macro_f1")}
    zero["subset_acc"] = model_metrics["test_acc"]
    rows = [("zero flags (multi-label)", zero, f"{seconds:.0f}")]
    if extra is not None:
        also = json.loads((extra[0] / "model" / "imgclf.json").read_text())["metrics"]
        values = {"map": also["test_map"], "macro_f1": also["test_macro_f1"], "subset_acc": also["test_acc"]}
        rows.append((f"multi-label {args.also}"[:44], values, f"{extra[1]:.0f}"))
    rows += [
        (
            "tile by tile, single-label (upper reference)",
            tile,
            f"{single_seconds:.0f}+{reference_seconds:.0f}",
        ),
        ("one label per image (lower reference)", whole, "-"),
    ]
    for name, values, wall in rows:
        print(
            f"{name:<44} {values['map']:>7.4f} {values['macro_f1']:>9.4f} "
            f"{values['subset_acc']:>11.4f} {wall:>8}"
        )
    val_f1, test_f1 = model_metrics["val_macro_f1"], model_metrics["test_macro_f1"]
    print()
    print(f"thresholds chosen on validation: macro F1 val {val_f1:.4f}, test {test_f1:.4f}")
    gap = (tile["macro_f1"] - zero["macro_f1"]) * 100
    print(f"macro F1 {gap:+.1f} points below tile by tile (target ≤ 5): {'met' if gap <= 5 else 'NOT met'}")
    print(f"mAP {zero['map']:.4f} (target ≥ 0.90): {'met' if zero['map'] >= 0.90 else 'NOT met'}")
    drift = abs(val_f1 - test_f1) * 100
    print(f"threshold drift {drift:.1f} points val → test (target ≤ 3): {'met' if drift <= 3 else 'NOT met'}")
    print(f"runs in {workdir / 'runs'}")


if __name__ == "__main__":
    main()
