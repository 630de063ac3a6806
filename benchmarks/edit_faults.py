"""`review --apply` and `--revert` killed at every step: N random class-folder trees, each with a
random decision log, each run killed (SIGKILL, in a forked child) at every step that changes the
disk, then the same command run again, then `--revert`.

    python benchmarks/edit_faults.py [--trees 200] [--seed 0] [--moves 10000] [--link-unlink]

Each tree: 3 to 6 classes (one named with a space, one with an accent), 6 to 24 images with
colliding names (`x.png` in several classes) and some identical files, the user's empty folders
(`empty/`, `.git/refs/tags/`), a sentinel tree and an inbox of new images beside it. Its log: 3 to 9
decisions in force, relabels into existing and new classes (into names that are taken), exclusions,
"not any class", new images labelled (copied in), some content hashes missing, an undo.

For every step k of `apply_to_folders` on the tree (counted in a run that is not killed): a fresh
tree, `--apply` killed at step k, `--apply` again, then `--revert`; the same for every step of
`--revert` after a clean `--apply`. Printed: files lost (a file of the tree, or a copy of a new image,
not present exactly once after the second run), files touched outside the data folder (the sentinel
tree and the inbox compared byte for byte), and trees restored (every crash point of the tree ended,
after `--revert`, with the tree exactly as it was: files, names, empty folders). Targets: 0, 0, N of N.

Then the time of `--apply` and `--revert` for `--moves` relabels (10,000 images of 10 classes, every
one relabelled) through the command line, as a user runs them.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine

from imgclf.data import edits, safe_files
from imgclf.data.decisions import Decision, apply_to_folders, file_digest, revert_folders

CLASSES = ["cat", "dog", "bird fly", "élan", "fox", "owl"]
NAMES = ["x.png", "y.png", "img_1.png", "x-1.png", "photo.PNG"]


def png(seed: int, side: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tree_spec(rng: np.random.Generator) -> dict:
    """A random tree: class → [(relative name, content seed)], the user's own empty folders."""
    classes = list(rng.choice(CLASSES, size=int(rng.integers(3, 7)), replace=False))
    files: dict[str, list[tuple[str, int]]] = {name: [] for name in classes}
    for _ in range(int(rng.integers(6, 25))):
        name = str(rng.choice(classes))
        file = str(rng.choice([*NAMES, "sub/x.png"]))
        if any(existing == file for existing, _ in files[name]):
            continue
        content = int(rng.integers(0, 12))  # 12 contents for up to 24 files: identical copies
        files[name].append((file, content))
    return {"files": files, "empty": bool(rng.random() < 0.7), "git": bool(rng.random() < 0.7)}


def write_tree(root: Path, spec: dict) -> Path:
    data = root / "data"
    for name, files in spec["files"].items():
        (data / name).mkdir(parents=True, exist_ok=True)
        for file, content in files:
            (data / name / file).parent.mkdir(parents=True, exist_ok=True)
            (data / name / file).write_bytes(png(content))
    if spec["empty"]:
        (data / "empty").mkdir()
    if spec["git"]:
        (data / ".git" / "refs" / "tags").mkdir(parents=True)
        (data / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "outside" / "deep").mkdir(parents=True)
    (root / "outside" / "keep.png").write_bytes(png(1000))
    (root / "outside" / "deep" / "f.png").write_bytes(png(1001))
    (root / "inbox").mkdir()
    for index in range(3):
        (root / "inbox" / ("x.png" if index == 0 else f"new{index}.png")).write_bytes(png(2000 + index))
    return data


def decisions_for(rng: np.random.Generator, spec: dict, root: Path) -> list[Decision]:
    data = root / "data"
    keys = [f"{name}/{file}" for name, files in spec["files"].items() for file, _ in files]
    classes = list(spec["files"])
    out: list[Decision] = []
    clock = 1_000_000.0
    for _ in range(int(rng.integers(3, 10))):
        clock += 1
        kind = rng.choice(["relabel", "relabel", "new-class", "exclude", "none", "new", "undo"])
        if kind == "new":
            path = str(root / "inbox" / str(rng.choice(["x.png", "new1.png", "new2.png"])))
            out.append(
                Decision(f"new:{path}", "label", path, "", "new", None, str(rng.choice(classes)), clock)
            )
            continue
        if not keys:
            continue
        key = str(rng.choice(keys))
        digest = file_digest(data / key) if rng.random() < 0.7 else ""  # some logs lack the hash
        if kind == "undo":
            out.append(Decision(f"label-issue:{key}", "undo", key, time=clock))
        elif kind in ("relabel", "new-class"):
            new = str(rng.choice(classes)) if kind == "relabel" else "brand new"
            out.append(
                Decision(
                    f"label-issue:{key}",
                    "relabel",
                    key,
                    digest,
                    "label-issue",
                    None,
                    new,
                    clock,
                    new_class=kind == "new-class",
                )
            )
        else:
            out.append(Decision(f"{kind}:{key}", str(kind), key, digest, str(kind), None, None, clock))
    return out


def snapshot(folder: Path) -> dict[str, str]:
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), folder)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def contents(folder: Path) -> collections.Counter:
    skip = {edits.JOURNAL_FILE, edits.LOCK_FILE}
    return collections.Counter(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not (p.parent.name == edits.REVIEW_FOLDER and p.name in skip)
    )


def killed_at(work, at: int) -> None:
    """`work()` in a forked child, killed with SIGKILL at its `at`-th step."""
    pid = os.fork()
    if pid == 0:
        count = [0]

        def hook(name: str) -> None:
            count[0] += 1
            if count[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)

        edits._step_hook = hook
        try:
            work()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def steps_of(work) -> int:
    count = [0]
    edits._step_hook = lambda name: count.__setitem__(0, count[0] + 1)
    try:
        work()
    finally:
        edits._step_hook = None
    return count[0]


def run_tree(index: int, seed: int, work_root: Path) -> tuple[int, int, bool, int]:
    """(files lost, files touched outside, restored at every crash point, crash points) of one tree."""
    rng = np.random.default_rng([seed, index])
    spec = tree_spec(rng)
    decision_rng_state = rng.bit_generator.state
    probe_root = work_root / "probe"
    shutil.rmtree(probe_root, ignore_errors=True)
    data = write_tree(probe_root, spec)
    rng.bit_generator.state = decision_rng_state
    decisions = decisions_for(rng, spec, probe_root)
    apply_steps = steps_of(lambda: apply_to_folders(data, decisions))
    revert_steps = steps_of(lambda: revert_folders(data)) if (data / edits.REVIEW_FOLDER).exists() else 0
    lost = touched = points = 0
    restored = True
    for phase, total in (("apply", apply_steps), ("revert", revert_steps)):
        for at in range(1, total + 1):
            root = work_root / "run"
            shutil.rmtree(root, ignore_errors=True)
            data = write_tree(root, spec)
            rng.bit_generator.state = decision_rng_state
            decisions = decisions_for(rng, spec, root)
            original, before = snapshot(data), contents(data)
            beside = {name: snapshot(root / name) for name in ("outside", "inbox")}
            if phase == "revert":
                apply_to_folders(data, decisions)
                killed_at(lambda data=data: revert_folders(data), at)
            else:
                killed_at(lambda data=data, decisions=decisions: apply_to_folders(data, decisions), at)
                applied = apply_to_folders(data, decisions)  # the same command again
                copies = collections.Counter(
                    hashlib.sha256(Path(s).read_bytes()).hexdigest() for s in _copied_sources(data, applied)
                )
                expected = before + copies
                now = contents(data)
                lost += sum((expected - now).values()) + sum((now - expected).values())
            if (data / edits.REVIEW_FOLDER / edits.JOURNAL_FILE).exists():
                revert_folders(data)
            restored &= snapshot(data) == original
            touched += sum(snapshot(root / name) != seen for name, seen in beside.items())
            points += 1
    return lost, touched, restored, points


def _copied_sources(data: Path, applied) -> list[str]:
    """Every new image copied in, by this run or the killed one (from the journal)."""
    journal = data / edits.REVIEW_FOLDER / edits.JOURNAL_FILE
    with edits.FolderEdits(data) as folder:
        return [change.source for change in folder.live() if change.op == "copy"] if journal.exists() else []


def time_moves(count: int, work_root: Path) -> tuple[float, float]:
    """Seconds of `imgclf review DATA --apply` and `--revert` for `count` relabels."""
    data = work_root / "many"
    shutil.rmtree(data, ignore_errors=True)
    classes = [f"class_{i}" for i in range(10)]
    blobs = [png(i, 16) for i in range(64)]
    log = work_root / "many.jsonl"
    with log.open("w") as handle:
        for index in range(count):
            name = classes[index % 10]
            path = data / name / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blobs[index % 64] + index.to_bytes(4, "big"))  # distinct files
            new = classes[(index + 1) % 10]
            handle.write(
                json.dumps(
                    {
                        "item": f"label-issue:{name}/{index:05d}.png",
                        "action": "relabel",
                        "path": f"{name}/{index:05d}.png",
                        "finding": "label-issue",
                        "old": name,
                        "new": new,
                        "time": index,
                    }
                )
                + "\n"
            )
    command = [sys.executable, "-c", "from imgclf.cli import main; main()"]
    started = time.perf_counter()
    applied = subprocess.run(
        [*command, "review", str(data), "--apply", "--out", str(log)], capture_output=True, text=True
    )
    apply_seconds = time.perf_counter() - started
    print(f"  {applied.stdout.strip()[:160]}{applied.stderr.strip()[-300:]}")
    started = time.perf_counter()
    reverted = subprocess.run([*command, "review", str(data), "--revert"], capture_output=True, text=True)
    revert_seconds = time.perf_counter() - started
    print(f"  {reverted.stdout.strip()[:160]}{reverted.stderr.strip()[-300:]}")
    return apply_seconds, revert_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moves", type=int, default=10_000)
    parser.add_argument(
        "--link-unlink", action="store_true", help="Rename by link then unlink (no renameat2)."
    )
    args = parser.parse_args()
    print(describe_machine())
    if args.link_unlink:
        safe_files._renameat2 = None
    print(f"rename: {'link then unlink' if safe_files._renameat2 is None else 'renameat2(RENAME_NOREPLACE)'}")
    work_root = Path(tempfile.mkdtemp(prefix="imgclf-edit-faults-"))
    lost = touched = restored = points = 0
    started = time.perf_counter()
    try:
        for index in range(args.trees):
            tree_lost, tree_touched, tree_restored, tree_points = run_tree(index, args.seed, work_root)
            lost, touched, points = lost + tree_lost, touched + tree_touched, points + tree_points
            restored += tree_restored
            if not tree_restored or tree_lost or tree_touched:
                print(f"tree {index}: lost {tree_lost}, touched {tree_touched}, restored {tree_restored}")
        print(
            f"{args.trees} trees, {points:,} crash points (each: killed, run again, reverted) in "
            f"{time.perf_counter() - started:.0f} s"
        )
        print(f"files lost: {lost} (target 0)")
        print(f"files touched outside the data folder: {touched} (target 0)")
        print(f"trees restored: {restored} of {args.trees} (target {args.trees} of {args.trees})")
        if args.moves:
            apply_seconds, revert_seconds = time_moves(args.moves, work_root)
            print(
                f"--apply of {args.moves:,} moves: {apply_seconds:.1f} s "
                f"({args.moves / apply_seconds:,.0f}/s); "
                f"--revert: {revert_seconds:.1f} s (command line, start-up included)"
            )
    finally:
        shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()
