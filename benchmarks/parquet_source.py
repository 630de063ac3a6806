"""The same photos as a Hugging Face Parquet image set and as split folders: the layout line, the
counts, the time to decode every image from the rows and from the files, and (with --train) the
zero-flag accuracy and wall time of each, side by side in one run.

    python benchmarks/parquet_source.py [../shared/datasets/flowers5.zip] [--per-class 100] [--train]

The Parquet set is written as `datasets.push_to_hub` writes one: data/train-0000k-of-00002.parquet,
data/validation-…, data/test-…, the image a struct of `bytes` and `path`, the label an integer
ClassLabel whose names are in README.md's `dataset_info` only (no `huggingface` schema metadata, so
the card is what names the classes), row groups of 100 rows. Each class's photos are split 70/15/15
by a seeded shuffle, the same way for both layouts. Each training run is a fresh process with an
empty cache folder of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from common import SHARED, describe_machine

SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def build(archive: Path, root: Path, per_class: int) -> tuple[Path, Path]:
    """root/parquet/{README.md, data/*.parquet} and root/folders/{train,val,test}/<class>/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    by_class: dict[str, list[str]] = {}
    rows: dict[str, list[tuple[bytes, str, int]]] = {split: [] for split in SPLIT_NAMES}
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if name.lower().endswith((".jpg", ".jpeg", ".png")) and "/" in name:
                by_class.setdefault(name.split("/")[-2], []).append(name)
        classes = sorted(by_class)
        for label, cls in enumerate(classes):
            names = sorted(by_class[cls])
            rng.shuffle(names)
            names = names[:per_class] if per_class > 0 else names
            cut = [int(len(names) * 0.7), int(len(names) * 0.85)]
            for index, name in enumerate(names):
                split = "train" if index < cut[0] else "val" if index < cut[1] else "test"
                data = z.read(name)
                target = root / "folders" / split / cls / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                rows[split].append((data, Path(name).name, label))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, split_rows in rows.items():
        shards = 2 if split == "train" else 1
        for shard in range(shards):
            part = split_rows[shard::shards]
            table = pa.table(
                {
                    "image": pa.array([{"bytes": d, "path": p} for d, p, _ in part], type=image_type),
                    "label": pa.array([label for _, _, label in part], type=pa.int64()),
                }
            )
            path = root / "parquet" / "data" / f"{SPLIT_NAMES[split]}-{shard:05d}-of-{shards:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path, row_group_size=100)
    names = "\n".join(f"          '{i}': {cls}" for i, cls in enumerate(classes))
    (root / "parquet" / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n"
        f"    dtype:\n      class_label:\n        names:\n{names}\n---\n# flowers5\n"
    )
    return root / "parquet", root / "folders"


def decode_seconds(data: Path, repeats: int = 2) -> tuple[float, int]:
    """The best of `repeats` decodes of every image at 224×224 (no cache), and the images decoded."""
    from imgclf.data.loader import decode_all
    from imgclf.data.preprocess import PreprocessSpec
    from imgclf.data.sources import scan_source

    image_set = scan_source(data)
    spec = PreprocessSpec(224, 224, 3, "crop")
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _, ok, _ = decode_all(image_set, spec)
        best = min(best, time.perf_counter() - started)
    return best, int(ok.sum())


TRAIN = """
import json, sys, time, imgclf
started = time.perf_counter()
run = imgclf.train(sys.argv[1], project=sys.argv[2])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "epochs": len(run.history) - 1, **run.metrics}))
"""


def train(data: Path, folder: Path) -> dict:
    """A zero-flag run in a fresh process with an empty cache folder of its own."""
    env = dict(os.environ, IMGCLF_CACHE_DIR=str(folder / "cache"))
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, str(data), str(folder / "runs")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=SHARED / "flowers5.zip")
    parser.add_argument("--per-class", type=int, default=100, help="photos per class (0: all)")
    parser.add_argument("--train", action="store_true", help="also train each with no flags")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory(prefix="imgclf-parquet-") as folder:
        parquet, folders = build(args.archive, Path(folder), args.per_class)
        size = sum(p.stat().st_size for p in parquet.rglob("*.parquet"))
        from imgclf.data.sources import scan_source

        for name, data in (("parquet", parquet), ("split folders", folders)):
            started = time.perf_counter()
            image_set = scan_source(data)
            seconds = time.perf_counter() - started
            print(f"{name}: {image_set.description} (scanned in {seconds:.2f} s)")
        print(f"parquet shards: {size / 2**20:.1f} MiB")
        print(f"\n{'layout':<14} {'decode s':>9} {'images':>7} {'images/s':>9}")
        timings = {}
        for name, data in (("parquet", parquet), ("split folders", folders)):
            seconds, count = decode_seconds(data)
            timings[name] = seconds
            print(f"{name:<14} {seconds:>9.2f} {count:>7} {count / seconds:>9.0f}")
        print(f"parquet / files decode time: {timings['parquet'] / timings['split folders']:.2f}")
        if not args.train:
            return
        print(f"\n{'layout':<14} {'val_acc':>8} {'test_acc':>9} {'wall s':>7} {'fine-tuning epochs':>19}")
        for name, data in (("parquet", parquet), ("split folders", folders)):
            metrics = train(data, Path(folder) / name.replace(" ", "-"))
            val, test, seconds = metrics["val_acc"], metrics["test_acc"], metrics["seconds"]
            print(f"{name:<14} {val:>8.4f} {test:>9.4f} {seconds:>7.1f} {metrics['epochs']:>19}")


if __name__ == "__main__":
    main()
