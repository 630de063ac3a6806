"""The same photos as split folders and as split tables (train / val / test CSVs whose paths are
absolute paths from another machine): the layout line, the counts and the zero-flag accuracy of each,
side by side in one run.

    python benchmarks/split_tables.py [../shared/datasets/flowers5.zip] [--per-class 100]

Each class's photos are split 70/15/15 by a seeded shuffle; the tables name every photo as
/home/someone/flowers/<file> (a machine that is not this one), with columns `image,species`.
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def build(archive: Path, root: Path, per_class: int) -> tuple[Path, Path]:
    """root/folders/{train,val,test}/<class>/ and root/tables/{train,val,test}.csv + images/."""
    rng = random.Random(0)
    by_class: dict[str, list[str]] = {}
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if name.lower().endswith((".jpg", ".jpeg", ".png")) and "/" in name:
                by_class.setdefault(name.split("/")[-2], []).append(name)
        rows = {"train": ["image,species"], "val": ["image,species"], "test": ["image,species"]}
        for label, names in sorted(by_class.items()):
            names = sorted(names)
            rng.shuffle(names)
            names = names[:per_class]
            cut = [int(len(names) * 0.7), int(len(names) * 0.85)]
            for index, name in enumerate(names):
                split = "train" if index < cut[0] else "val" if index < cut[1] else "test"
                data = z.read(name)
                file = f"{label}-{Path(name).name}"
                target = root / "folders" / split / label / file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                (root / "tables" / "images").mkdir(parents=True, exist_ok=True)
                (root / "tables" / "images" / file).write_bytes(data)
                rows[split].append(f"/home/someone/flowers/{file},{label}")
    for split, lines in rows.items():
        (root / "tables" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root / "folders", root / "tables"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "archive", nargs="?", type=Path, default=REPO.parent / "shared" / "datasets" / "flowers5.zip"
    )
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="imgclf-split-tables-") as folder:
        folders, tables = build(args.archive, Path(folder), args.per_class)
        from imgclf.data.sources import scan_source

        for name, data in (("split folders", folders), ("split tables", tables)):
            image_set = scan_source(data)
            counts = {split: image_set.splits.count(split) for split in ("train", "val", "test")}
            print(f"{name}: {image_set.description}")
            print(f"  counts {counts}, classes {image_set.classes}")
        print(f"\n{'layout':<14} {'val_acc':>8} {'test_acc':>9} {'wall s':>7}")
        import imgclf

        for name, data in (("split folders", folders), ("split tables", tables)):
            started = time.perf_counter()
            run = imgclf.train(data, project=str(Path(folder) / name.replace(" ", "-")))
            seconds = time.perf_counter() - started
            print(
                f"{name:<14} {run.metrics['val_acc']:>8.4f} {run.metrics['test_acc']:>9.4f} {seconds:>7.1f}"
            )


if __name__ == "__main__":
    main()
