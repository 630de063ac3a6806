"""The improvement loop, measured: a simulated reviewer on noisy labels, and active learning.

**Simulated reviewer.** A flowers5 subset and an MNIST subset (class folders) get 5% of their labels
flipped (seeded: a file moved to another class's folder); a clean test set is kept apart. A
zero-flag run trains on the noisy data; `imgclf review DATA --model RUN` ranks what to look at; a
reviewer answers every shown item with the truth (relabel a flipped image to its true class, keep
any other); `imgclf update RUN --review review.jsonl` refits the head. Reported: test accuracy
before, after the first 50, 100 and 200 items in the page's order and after 200 in random order,
the flips recovered, and each update's wall time (the first update reads the features the review
stored; `cold` is an update with an empty cache, every image through the network).

**Active learning.** From 10 labelled photos per class of flowers5, `review --new POOL` orders the
unlabelled pool by uncertainty; 100 labelled in that order are compared with 100 chosen at random
(three seeds).

Targets: `update` under 30 s for 2,000 images on 2 cores; the reviewed order recovers at least 80%
of the flips within the first 2× the number of flipped items.

    python benchmarks/review_loop.py                       # flowers5 1,500 + MNIST 2,000, active learning
    python benchmarks/review_loop.py --only flowers5 --per-class 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, describe_machine
from zero_flag import cpu_flags

NOISE = 0.05
BUDGETS = (50, 100, 200)


def unpack(archive: str, prefix: str, per_class: int, test_per_class: int, workdir: Path, seed: int):
    """Class folders of `per_class` images per class (data/) and `test_per_class` others (test/);
    returns (data folder, test folder, {key: class})."""
    rng = np.random.default_rng(seed)
    data, test = workdir / "data", workdir / "test"
    truth = {}
    with zipfile.ZipFile(SHARED / archive) as handle:
        by_class: dict[str, list[str]] = {}
        for name in handle.namelist():
            if name.startswith(prefix) and name.lower().endswith((".png", ".jpg")):
                by_class.setdefault(name.split("/")[-2], []).append(name)
        for label, members in sorted(by_class.items()):
            chosen = rng.permutation(sorted(members))[: per_class + test_per_class]
            for position, member in enumerate(chosen):
                folder = (data if position < per_class else test) / label
                folder.mkdir(parents=True, exist_ok=True)
                (folder / Path(member).name).write_bytes(handle.read(member))
                if position < per_class:
                    truth[f"{label}/{Path(member).name}"] = label
    return data, test, truth


def flip(data: Path, truth: dict[str, str], share: float, seed: int) -> dict[str, str]:
    """Move `share` of the images to another class's folder; returns {new key: true class}."""
    rng = np.random.default_rng(seed + 1)
    classes = sorted({label for label in truth.values()})
    keys = sorted(truth)
    flipped = {}
    for key in rng.choice(keys, round(share * len(keys)), replace=False):
        label = truth[key]
        other = classes[(classes.index(label) + int(rng.integers(1, len(classes)))) % len(classes)]
        target = data / other / Path(key).name
        (data / key).rename(target)
        flipped[f"{other}/{Path(key).name}"] = label
    return flipped


def train(data: Path, workdir: Path, name: str) -> tuple[Path, float]:
    env = {**os.environ, "COLUMNS": "120"}
    command = ["imgclf", "train", str(data), "--project", str(workdir / "runs"), "--name", name]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return workdir / "runs" / name, time.perf_counter() - started


def accuracy(model: Path, test: Path) -> float:
    import imgclf

    evaluation = imgclf.evaluate(model, test, out=model.parent / "evaluate-test")
    return evaluation.accuracy


def reviewed(session, order, flipped: dict[str, str], log: Path) -> int:
    """The reviewer: the truth for every item shown, in `order`; returns the flips recovered."""
    from imgclf.data.decisions import Decision, DecisionLog, file_digest

    decisions = DecisionLog(log)
    recovered = set()
    for number in order:
        item = session.items[number]
        true = flipped.get(item.path)
        if true is not None and item.path not in recovered:
            decisions.append(Decision(item.id, "relabel", item.path, file_digest(item.location), item.kind,
                                      item.label, true))  # fmt: skip
            recovered.add(item.path)
        else:
            decisions.append(Decision(item.id, "keep", item.path, "", item.kind, item.label))
    return len(recovered)


def random_images_session(session, count: int, seed: int):
    """`count` images of the data in random order, as items a reviewer checks one by one."""
    from imgclf.review.findings import Item

    rng = np.random.default_rng(seed)
    image_set = session.image_set
    chosen = rng.choice(len(image_set), min(count, len(image_set)), replace=False)
    return [
        Item(f"random:{image_set.keys[i]}", "random", image_set.keys[i], image_set.location(int(i)),
             image_set.classes[image_set.labels[i]], None, 0.0, sample=int(i))
        for i in chosen
    ]  # fmt: skip


def simulated_reviewer(
    name: str, archive: str, prefix: str, per_class: int, workdir: Path, seed: int
) -> None:
    from imgclf.paths import cache_dir
    from imgclf.review.session import open_review
    from imgclf.training.update import update_run

    workdir.mkdir(parents=True, exist_ok=True)
    data, test, truth = unpack(archive, prefix, per_class, 100, workdir, seed)
    flipped = flip(data, truth, NOISE, seed)
    run, seconds = train(data, workdir, "noisy")
    before = accuracy(run / "model", test)
    started = time.perf_counter()
    session = open_review(data, model=run, review=workdir / "unused.jsonl")
    review_seconds = time.perf_counter() - started
    count = len(session.image_set)
    print(f"{name}: {count:,} images, {len(flipped)} flipped ({NOISE:.0%}); zero-flag run {seconds:.0f} s; "
          f"review opened in {review_seconds:.0f} s with {len(session.items):,} items",
          flush=True)  # fmt: skip
    in_first = len({item.path for item in session.items[: 2 * len(flipped)] if item.path in flipped})
    print(f"  flips among the first {2 * len(flipped)} items (2× the flips): {in_first} of {len(flipped)} "
          f"({in_first / max(len(flipped), 1):.0%}; target ≥ 80%)", flush=True)  # fmt: skip
    print(f"  {'reviewed':<28} {'flips fixed':>11} {'test acc':>9} {'update s':>9}")
    print(f"  {'none (the noisy run)':<28} {'-':>11} {before:>9.4f} {'-':>9}", flush=True)
    for budget in BUDGETS:
        log = workdir / f"review-{budget}.jsonl"
        fixed = reviewed(session, range(min(budget, len(session.items))), flipped, log)
        update = update_run(run, log, name=f"update-{budget}")
        after = accuracy(update.artifact, test)
        print(f"  {f'first {budget} in page order':<28} {fixed:>11} {after:>9.4f} {update.seconds:>9.1f}",
              flush=True)  # fmt: skip
    items = random_images_session(session, 200, seed)
    session.items = items
    log = workdir / "review-random.jsonl"
    fixed = reviewed(session, range(len(items)), flipped, log)
    update = update_run(run, log, name="update-random")
    after = accuracy(update.artifact, test)
    print(f"  {'200 in random order':<28} {fixed:>11} {after:>9.4f} {update.seconds:>9.1f}", flush=True)
    os.environ["IMGCLF_CACHE_DIR"] = str(workdir / "cold-cache")  # an empty cache: every image anew
    cold = update_run(run, workdir / "review-200.jsonl", name="update-cold")
    os.environ["IMGCLF_CACHE_DIR"] = str(cache_dir())
    print(f"  cold update (empty cache, {cold.computed:,} images through the network): {cold.seconds:.1f} s",
          flush=True)  # fmt: skip


def active_learning(workdir: Path, seed: int, start: int = 10, budget: int = 100, repeats: int = 3) -> None:
    from imgclf.data.decisions import Decision, DecisionLog
    from imgclf.review.findings import new_image_paths
    from imgclf.review.session import open_review
    from imgclf.training.update import update_run

    workdir.mkdir(parents=True, exist_ok=True)
    data, test, _ = unpack("flowers5.zip", "flowers5/", start, 100, workdir, seed)
    pool_data, _, pool_truth = unpack("flowers5.zip", "flowers5/", 400, 0, workdir / "pool-source", seed + 7)
    pool = workdir / "pool"
    pool.mkdir(exist_ok=True)
    truth = {}
    labelled = {p.name for p in data.rglob("*.jpg")} | {p.name for p in test.rglob("*.jpg")}
    for key, label in pool_truth.items():
        if Path(key).name not in labelled:
            target = pool / Path(key).name
            (pool_data / key).rename(target)
            truth[str(target.resolve())] = label
    run, seconds = train(data, workdir, "start")
    before = accuracy(run / "model", test)
    session = open_review(data, model=run, new=pool, review=workdir / "unused.jsonl")
    rng = np.random.default_rng(seed)
    paths = [str(p.resolve()) for p in new_image_paths(pool)]
    print(f"active learning: {start} labelled photos per class, a pool of {len(paths):,}; start run "
          f"{seconds:.0f} s, test acc {before:.4f}", flush=True)  # fmt: skip
    arms = [("the page's order (uncertainty)", [i.path for i in session.items if i.kind == "new"][:budget])]
    for repeat in range(repeats):
        arms.append(
            (f"random, seed {repeat}", [paths[i] for i in rng.choice(len(paths), budget, replace=False)])
        )
    for number, (name, picked) in enumerate(arms):
        log = DecisionLog(workdir / f"new-{number}.jsonl")
        for path in picked:
            log.append(Decision(f"new:{path}", "label", path, "", "new", None, truth[path]))
        update = update_run(run, log.path, name=f"update-new-{number}")
        after = accuracy(update.artifact, test)
        classes = np.bincount([sorted(set(truth.values())).index(truth[p]) for p in picked], minlength=5)
        print(f"  +{budget} labelled, {name:<30} test acc {after:.4f}  per class {classes.tolist()}  "
              f"(update {update.seconds:.1f} s)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["flowers5", "mnist", "active"], default=None)
    parser.add_argument("--per-class", type=int, default=None, help="images per class (default 300 / 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-review-loop-"))
    os.environ.setdefault("IMGCLF_CACHE_DIR", str(workdir / "cache"))
    print(f"machine: {describe_machine()}; CPU flags: {cpu_flags()}", flush=True)
    if args.only in (None, "flowers5"):
        folder = workdir / "flowers5"
        simulated_reviewer("flowers5", "flowers5.zip", "flowers5/", args.per_class or 300, folder, args.seed)
    if args.only in (None, "mnist"):
        folder = workdir / "mnist"
        simulated_reviewer(
            "MNIST", "mnist_png.zip", "mnist_png/train/", args.per_class or 200, folder, args.seed
        )
    if args.only in (None, "active"):
        active_learning(workdir / "active", args.seed)
    print(f"runs in {workdir}")


if __name__ == "__main__":
    main()
