"""A review's decisions: appended one JSON line each to `review.jsonl`, read back into what they
mean for each image, and applied to the data when the user asks (moves between class folders,
undone by `revert_moves`; a new CSV beside the old one; or an overlay `train --review` reads).

A decision names its image by the content hash of its bytes and by its path (the key in the data
source), so an overlay still finds an image that was moved or renamed. Nothing is ever rewritten in
place: a decision is one appended line (flushed and fsynced before the page hears it is kept), an
undo is one more line, so a review killed at any point keeps every decision made before.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.imageset import ImageSet
from imgclf.errors import DataError, UsageError
from imgclf.io import fsync_path, write_text_atomic

ACTIONS = ("keep", "relabel", "none", "exclude", "label", "undo")
REVIEW_FOLDER = ".imgclf-review"  # inside a reviewed class-folder tree: hidden, so never a class
MOVES_FILE = "moves.jsonl"


@dataclass
class Decision:
    """One decision on one finding about one image.

    action: keep (the finding is wrong; never shown again), relabel (to `new`), none (not any of
    the classes), exclude (leave the image out), label (a new image gets its first label `new`),
    undo (takes back the last decision on this item that is not undone)."""

    item: str  # the finding's id: "<kind>:<key>"
    action: str
    path: str  # the image's key in the data source (or its absolute path for a --new image)
    sha256: str = ""
    finding: str = ""
    old: str | None = None
    new: str | None = None
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (the first 32 hex digits): the image's identity across moves."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


class DecisionLog:
    """review.jsonl: append-only, each line durable before `append` returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, decision: Decision) -> None:
        if decision.action not in ACTIONS:
            raise UsageError(f"unknown review action {decision.action!r}; one of {', '.join(ACTIONS)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(decision.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if fresh:
            fsync_path(self.path.parent)

    def read(self) -> list[Decision]:
        return read_decisions(self.path) if self.path.is_file() else []


def read_decisions(path: str | Path) -> list[Decision]:
    """Every decision of a review.jsonl, in order; a last line cut short by a crash is ignored."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"review decisions not found: {path}")
    decisions = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
            decisions.append(Decision(**{k: values[k] for k in Decision.__dataclass_fields__ if k in values}))
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            if number == len(lines):  # the line being written when the review was killed
                break
            raise DataError(f"{path}:{number} is not a review decision ({error})") from error
    return decisions


def current_decisions(decisions: Iterable[Decision]) -> dict[str, Decision]:
    """The decision in force for each finding (item), undos applied."""
    stacks: dict[str, list[Decision]] = {}
    for decision in decisions:
        stack = stacks.setdefault(decision.item, [])
        if decision.action == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(decision)
    return {item: stack[-1] for item, stack in stacks.items() if stack}


def image_verdicts(decisions: Iterable[Decision]) -> dict[str, Decision]:
    """What each image becomes (by path), from the decisions in force: the latest that changes
    it (relabel, label, none, exclude); `keep` changes nothing."""
    verdicts: dict[str, Decision] = {}
    for decision in sorted(current_decisions(decisions).values(), key=lambda d: d.time):
        if decision.action != "keep":
            verdicts[decision.path] = decision
    return verdicts


@dataclass
class Overlay:
    """The decisions' effect on an image set, counted."""

    image_set: ImageSet
    relabelled: int = 0
    removed: int = 0
    added: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, label) of new images
    new_classes: list[str] = field(default_factory=list)


def apply_overlay(image_set: ImageSet, decisions: Sequence[Decision]) -> Overlay:
    """The image set as the decisions say: relabelled images get their new class (a class the set
    lacks is added), excluded and "not any class" images are left out, and newly labelled images
    that are not in the set are listed in `added` for the caller to read."""
    if image_set.multi_label:
        raise UsageError("review decisions relabel single-label data; this set is multi-label")
    verdicts = image_verdicts(decisions)
    keys = set(image_set.keys)
    # decisions whose image is not at its path any more (moved, renamed): found by content, among
    # the images of the same file name (hashing only those)
    unmatched = {d.sha256: d for d in verdicts.values() if d.path not in keys and d.sha256}
    names = {Path(d.path).name for d in unmatched.values()}
    classes = list(image_set.classes)
    labels = image_set.labels.copy()
    keep = np.ones(len(image_set), dtype=bool)
    overlay = Overlay(image_set)
    seen: set[str] = set()
    for index, key in enumerate(image_set.keys):
        decision = verdicts.get(key)
        if decision is None and unmatched and Path(key).name in names:
            location = image_set.location(index)
            if os.path.isfile(location):
                decision = unmatched.get(file_digest(location))
        if decision is None:
            continue
        seen.add(decision.path)
        if decision.action in ("none", "exclude"):
            keep[index] = False
            overlay.removed += 1
        elif decision.new is not None and decision.new != classes[labels[index]]:
            if decision.new not in classes:
                classes.append(decision.new)
                overlay.new_classes.append(decision.new)
            labels[index] = classes.index(decision.new)
            overlay.relabelled += 1
    for decision in verdicts.values():
        if decision.action == "label" and decision.path not in seen and decision.new is not None:
            overlay.added.append((decision.path, decision.new))
            if decision.new not in classes:
                classes.append(decision.new)
                overlay.new_classes.append(decision.new)
    changed = dataclasses.replace(image_set, labels=labels, classes=classes)
    overlay.image_set = changed.subset(np.flatnonzero(keep))
    return overlay


def with_added_images(image_set: ImageSet, added: Sequence[tuple[str, str]]) -> ImageSet:
    """The image set and the images a review labelled anew (absolute paths, read by the same
    reader), their classes added when new."""
    if not added:
        return image_set
    classes = list(image_set.classes)
    keys = list(image_set.keys)
    labels = image_set.labels.tolist()
    for path, label in added:
        if label not in classes:
            classes.append(label)
        keys.append(str(Path(path).resolve()))
        labels.append(classes.index(label))
    return dataclasses.replace(  # per-sample splits, headers and file stats cover the old keys only
        image_set,
        keys=keys,
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
        splits=None,
        headers=None,
        file_stats=None,
    )


def read_overlay(image_set: ImageSet, review: str | Path) -> ImageSet:
    """`train --review review.jsonl`: the image set with a review's decisions applied, said in one
    line (the files stay where they are)."""
    import logging

    overlay = apply_overlay(image_set, read_decisions(review))
    changed = with_added_images(overlay.image_set, overlay.added)
    new = f"; new classes: {', '.join(overlay.new_classes)}" if overlay.new_classes else ""
    logging.getLogger(__name__).info(
        "%s: %d labels changed, %d images left out, %d new images%s",
        Path(review).name, overlay.relabelled, overlay.removed, len(overlay.added), new,
    )  # fmt: skip
    return changed


@dataclass
class Move:
    source: str  # relative to the data folder
    target: str


def apply_to_folders(root: str | Path, decisions: Sequence[Decision]) -> list[Move]:
    """Carry the decisions out on a class-folder tree: a relabelled image moves to its new class's
    folder (made when new), an excluded one to `.imgclf-review/excluded/<class>/`, "not any class"
    to `.imgclf-review/none/<class>/` (hidden: never read as a class). Every move is recorded in
    `.imgclf-review/moves.jsonl` before it is made, so `revert_moves` puts them back."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--apply moves files between class folders; {root} is not a folder")
    log = root / REVIEW_FOLDER / MOVES_FILE
    log.parent.mkdir(parents=True, exist_ok=True)
    moves = []
    for decision in image_verdicts(decisions).values():
        source = root / decision.path
        if not source.is_file():
            continue  # applied before, or a --new image outside the data
        parts = Path(decision.path).parts
        if len(parts) < 2:
            continue
        if decision.action in ("none", "exclude"):
            folder = "excluded" if decision.action == "exclude" else "none"
            target = Path(REVIEW_FOLDER, folder, *parts)
        elif decision.new is not None:
            target = Path(*parts[:-2], decision.new, parts[-1])
        else:
            continue
        if (root / target).exists():
            target = target.with_name(f"{target.stem}-{decision.sha256[:8]}{target.suffix}")
        move = Move(decision.path, target.as_posix())
        with log.open("a", encoding="utf-8") as handle:  # recorded before it is made
            handle.write(json.dumps(asdict(move)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, root / target)
        moves.append(move)
    return moves


def revert_moves(root: str | Path) -> int:
    """Put back every move `apply_to_folders` made in `root`, the latest first; returns how many."""
    root = Path(root)
    log = root / REVIEW_FOLDER / MOVES_FILE
    if not log.is_file():
        raise UsageError(f"nothing to revert: {root} has no {REVIEW_FOLDER}/{MOVES_FILE}")
    moves = [
        Move(**json.loads(line)) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    reverted = 0
    for move in reversed(moves):
        target, source = root / move.target, root / move.source
        if target.is_file() and not source.exists():
            source.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, source)
            reverted += 1
    done = log.with_name(f"moves-reverted-{int(time.time())}.jsonl")
    os.replace(log, done)  # kept, so what was reverted stays on record
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if folder != root / REVIEW_FOLDER and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)  # class folders the moves emptied or made
    return reverted


def apply_to_table(
    table: str | Path, path_column: str, label_column: str, decisions: Sequence[Decision]
) -> Path:
    """A new CSV beside the old one (`<name>.reviewed.csv`): relabelled rows with their new label,
    excluded and "not any class" rows left out; the old file is untouched."""
    import pandas as pd

    table = Path(table)
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    verdicts = image_verdicts(decisions)
    by_name = {Path(path).name: d for path, d in verdicts.items()}
    keep, labels = [], []
    for raw, label in zip(frame[path_column].tolist(), frame[label_column].tolist()):
        decision = verdicts.get(raw) or by_name.get(Path(raw).name)
        if decision is not None and decision.action in ("none", "exclude"):
            keep.append(False)
            labels.append(label)
            continue
        keep.append(True)
        labels.append(decision.new if decision is not None and decision.new is not None else label)
    frame[label_column] = labels
    out = table.with_name(f"{table.stem}.reviewed.csv")
    buffer = io.StringIO()
    frame[keep].to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL)
    write_text_atomic(out, buffer.getvalue())
    return out


def describe(decisions: Sequence[Decision]) -> dict[str, Any]:
    """How many decisions of each action are in force."""
    counts: dict[str, int] = {}
    for decision in current_decisions(decisions).values():
        counts[decision.action] = counts.get(decision.action, 0) + 1
    return counts
