"""Zero-flag `imgclf train DATA` against the recipes a user had to know before: accuracy and wall time.

Each recipe runs as its own `imgclf train` process on the same data, one after the other, in one run
of this script, with an empty cache folder (decoding and features are part of each run's time):

- zero: no flags at all (the model, the recipe and the time limit are imgclf's choices);
- pretrained: `--model efficientnet_lite0 --pretrained --epochs 6 --recipe plain` (fine-tune everything);
- readme: `--freeze-epochs 2 --finetune-epochs 4 --finetune-bn frozen --augment light` (the old README's);
- head-only: `--head-only --epochs 30 --lr 1e-2` (the bottleneck route).

Data: a folder, a zip, or a zip subset (`flowers5.zip:50` keeps 50 images per class, seeded).
Prints the machine, then one row per (data, recipe): validation and test accuracy, best epoch,
what `auto` chose, wall time.

    python benchmarks/zero_flag.py ../shared/datasets/flowers5.zip:50 ../shared/datasets/flowers5.zip:250
    python benchmarks/zero_flag.py ../shared/datasets/mnist_png.zip --recipes zero,head-only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine

RECIPES = {
    "zero": "",
    "pretrained": "--model efficientnet_lite0 --pretrained --epochs 6 --recipe plain",
    "readme": (
        "--model efficientnet_lite0 --pretrained --freeze-epochs 2 --finetune-epochs 4 --finetune-bn frozen "
        "--augment light"
    ),
    "head-only": "--model efficientnet_lite0 --pretrained --head-only --epochs 30 --lr 1e-2",
}


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return ", ".join(flag for flag in wanted if f" {flag}" in flags) or "none of avx2/avx512"


def subset(spec: str, workdir: Path) -> Path:
    """`archive.zip:N` → a folder with N images per class (seeded), unpacked from the zip;
    `archive.zip:N:a,b` takes only the classes named (e.g. two easy classes, where the head is enough)."""
    match = re.fullmatch(r"(.+):(\d+)(?::([^:/]+))?", spec)
    if match is None:
        return Path(spec)
    archive, per_class, only = match.groups()
    wanted = set(only.split(",")) if only else None
    suffix = "_" + "_".join(sorted(wanted)) if wanted else ""
    target = workdir / f"{Path(archive).stem}_{per_class}{suffix}"
    with zipfile.ZipFile(archive) as handle:
        names = [n for n in handle.namelist() if re.search(r"\.(jpe?g|png)$", n, re.I)]
        by_class: dict[str, list[str]] = {}
        for name in names:
            if wanted is None or name.split("/")[-2] in wanted:
                by_class.setdefault(name.split("/")[-2], []).append(name)
        rng = np.random.default_rng(0)
        for label, members in sorted(by_class.items()):
            for name in rng.permutation(sorted(members))[: int(per_class)]:
                path = target / label / Path(name).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(handle.read(name))
    return target


def run(data: Path, recipe: str, workdir: Path, extra: list[str]) -> dict[str, object]:
    project = workdir / "runs"
    name = f"{data.name}-{recipe}"
    env = {**os.environ, "IMGCLF_CACHE_DIR": str(workdir / f"cache-{name}"), "COLUMNS": "120"}
    command = ["imgclf", "train", str(data), *RECIPES[recipe].split(), *extra]
    command += ["--project", str(project), "--name", name]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        words = [line.strip(" │╭╮╰╯─") for line in result.stderr.splitlines()]
        return {"error": " ".join(w for w in words if w)[-300:] or "?", "seconds": seconds}
    run_dir = project / name
    (run_dir / "console.log").write_text(result.stderr + result.stdout, encoding="utf-8")  # what it printed
    summary = dict(
        line.split(": ", 1) for line in (run_dir / "summary.txt").read_text().splitlines() if ": " in line
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    chosen = f"{config['model']['name']}, {config['train']['recipe']}, {config['train']['epochs']} epochs"
    return {
        "val_acc": summary.get("val_acc", "-"),
        "test_acc": summary.get("test_acc", "-"),
        "best": summary.get("best epoch", "-").split(" ")[0],
        "chosen": chosen,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="+", help="folder, zip, or zip:N (N images per class)")
    parser.add_argument("--recipes", default="zero,pretrained,readme,head-only")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where subsets and runs go (default: temp)"
    )
    parser.add_argument("--extra", default="", help="flags added to every run, e.g. '--seed 1'")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-zero-flag-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe_machine()}; CPU flags: {cpu_flags()}")
    print(f"{'data':<22} {'recipe':<11} {'val_acc':>8} {'test_acc':>8} {'best':>5} {'wall s':>8}  chosen")
    for spec in args.data:
        data = subset(spec, workdir)
        for recipe in args.recipes.split(","):
            row = run(data, recipe, workdir, args.extra.split())
            if "error" in row:
                print(f"{data.name:<22} {recipe:<11} error after {row['seconds']:.0f} s: {row['error']}")
                continue
            print(
                f"{data.name:<22} {recipe:<11} {row['val_acc']:>8} {row['test_acc']:>8} {row['best']:>5} "
                f"{row['seconds']:>8.1f}  {row['chosen']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
