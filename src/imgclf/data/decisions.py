"""A review's decisions: appended one JSON line each to `review.jsonl`, read back into what they
mean for each image, and applied to the data when the user asks (moves between class folders,
undone by `revert_folders`, all through `imgclf.data.edits`; a new CSV beside the old one; or an
overlay `train --review` reads).

A decision names its image by the content hash of its bytes and by its path (the key in the data
source), so an overlay still finds an image that was moved or renamed. Nothing is ever rewritten in
place: a decision is one appended line (flushed and fsynced before the page hears it is kept), an
undo is one more line, so a review killed at any point keeps every decision made before.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.decode import is_image
from imgclf.data.edits import JOURNAL_FILE, REVIEW_FOLDER, FolderEdits, RevertResult, write_new_file
from imgclf.data.imageset import ImageSet
from imgclf.data.safe_files import cut_short, file_digest, name_problem, relative_problem, resolved_inside
from imgclf.errors import DataError, UsageError
from imgclf.io import fsync_path

ACTIONS = ("keep", "relabel", "none", "exclude", "label", "undo")


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
    new_class: bool = False  # `new` is a class the user created in the review, on purpose

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class DecisionLog:
    """review.jsonl: append-only, each line durable before `append` returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, decision: Decision) -> None:
        if decision.action not in ACTIONS:
            raise UsageError(f"unknown review action {decision.action!r}; one of {', '.join(ACTIONS)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        if not fresh:
            cut_short(self.path)  # a line a killed review was writing: never acknowledged to the page
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
class Applied:
    """What `apply_to_folders` did: each move and copy as (from, to), and the decisions it skipped."""

    root: Path
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to), relative to root
    copied: list[tuple[str, str]] = field(default_factory=list)  # (absolute source, to)
    skipped: list[str] = field(default_factory=list)  # one line each
    settled: list[str] = field(default_factory=list)  # what a killed process had left, settled

    def summary(self) -> str:
        text = f"moved {len(self.moved)} files"
        if self.copied:
            text += f" and copied {len(self.copied)} new images"
        text += f" in {self.root}"
        if self.skipped:
            more = f" and {len(self.skipped) - 1} more" if len(self.skipped) > 1 else ""
            text += f"; skipped {self.skipped[0]}{more}"
        return text


@dataclass
class _Planned:
    kind: str  # move | copy
    source: str  # relative to the root (move) or absolute (copy)
    target: str  # relative to the root
    digest: str = ""  # the file's content hash, when the plan has read it


def _describe(decision: Decision) -> str:
    to = (
        f" to {decision.new!r}"
        if decision.new is not None and decision.action in ("relabel", "label")
        else ""
    )
    return f"the decision on {decision.path!r} ({decision.action}{to})"


def _split_prefixes(image_set: ImageSet, splits: str | None) -> dict[str, str]:
    """Split → the folder of its class folders, relative to the image set's root ("" for class folders)."""
    if image_set.layout != "split-folders":
        return {"all": ""}
    from imgclf.data.layout import find_layout

    root = Path(image_set.reader.root)
    layout = find_layout(root, splits)
    return {split: folder.relative_to(root).as_posix() for split, folder in layout.splits.items()}


def plan_folder_changes(
    image_set: ImageSet, decisions: Sequence[Decision], edits: FolderEdits, splits: str | None = "auto",
    review: str = "review.jsonl",
) -> tuple[list[_Planned], list[str]]:  # fmt: skip
    """Every change the decisions ask of a class-folder tree, each checked before any is made: a
    relabelled image moves to its new class's folder, an excluded one to `.imgclf-review/excluded/`,
    "not any class" to `.imgclf-review/none/` (hidden: never read as a class), and a new image (by
    absolute path) is copied into its class's folder (of the training split). Only files of the
    scanned set move, only into existing classes or ones the review created on purpose; a decision
    that breaks a rule is a DataError naming it, and nothing is changed. Returns the plan and the
    decisions skipped (applied before, or naming a file no longer there), one line each."""
    planner = _FolderPlanner(image_set, decisions, edits, splits, review)
    for decision in image_verdicts(decisions).values():
        planner.add(decision)
    return planner.plan, planner.skipped


class _FolderPlanner:
    """The plan of `plan_folder_changes`, one decision at a time: what it may change, and the
    changes and skipped decisions so far."""

    def __init__(
        self, image_set: ImageSet, decisions: Sequence[Decision], edits: FolderEdits, splits: str | None,
        review: str,
    ) -> None:  # fmt: skip
        self.image_set, self.edits, self.review = image_set, edits, review
        self.prefixes = _split_prefixes(image_set, splits)
        self.train_prefix = self.prefixes.get("train", self.prefixes.get("all", ""))
        self.keys = {key: index for index, key in enumerate(image_set.keys)}
        created = {d.new for d in current_decisions(decisions).values() if d.new_class and d.new is not None}
        self.classes = set(image_set.classes) | created
        self.moved = edits.moved_from()
        self.copied = {c.source for c in edits.live() if c.op == "copy"}
        self.plan: list[_Planned] = []
        self.skipped: list[str] = []

    def refuse(self, decision: Decision, problem: str) -> DataError:
        return DataError(f"{self.review}: {_describe(decision)}: {problem}; nothing was changed")

    def check_inside(self, decision: Decision, relative: str, what: str, own_folder: bool = False) -> None:
        try:
            self.edits.check_inside(relative, what, own_folder)
        except DataError as error:
            raise self.refuse(decision, str(error)) from None

    def add(self, decision: Decision) -> None:
        """Plan what `decision` asks (a move, a copy, or nothing), or refuse it."""
        if decision.action in ("relabel", "label") and decision.new is not None:
            problem = name_problem(decision.new)
            if problem is not None:
                raise self.refuse(decision, f"class {decision.new!r}: {problem}")
            if decision.new not in self.classes:
                raise self.refuse(
                    decision, f"{decision.new!r} is not a class of the data, nor one the review created"
                )
        elif decision.action not in ("none", "exclude"):
            return
        path = decision.path
        if isinstance(path, str) and os.path.isabs(path) and "\0" not in path:
            self.add_copy(decision, path)
        else:
            self.add_move(decision, path)

    def add_copy(self, decision: Decision, path: str) -> None:
        """A new image (review --new), named by its absolute path, copied into its class's folder of
        the training split."""
        if decision.action in ("none", "exclude"):
            return  # a new image left out or not any class: nothing to do on disk
        if decision.action != "label" or decision.finding != "new":
            raise self.refuse(decision, "an absolute path: only a new image (review --new) is named so")
        source = Path(path)
        if resolved_inside(self.edits.root, source):
            raise self.refuse(decision, "a new image from inside the data folder is already in it")
        if not source.is_file() or not is_image(source):
            raise self.refuse(decision, "not an image file")
        if path in self.copied:
            self.skipped.append(f"{path}: copied before")
            return
        target = "/".join(p for p in (self.train_prefix, decision.new, source.name) if p)
        self.check_inside(decision, target, "copy to")
        self.plan.append(_Planned("copy", path, target))

    def add_move(self, decision: Decision, path: Any) -> None:
        """A file of the scanned set moved to its new class's folder, or into the review folder
        (excluded, not any class); skipped when an earlier apply moved it or its bytes changed."""
        problem = relative_problem(path)
        if problem is not None:
            raise self.refuse(decision, problem)
        if path in self.moved:  # an earlier apply moved it; whatever is there now is another file
            self.skipped.append(f"{path}: moved before")
            return
        if path not in self.keys:
            self.skipped.append(f"{path}: not in the data now")
            return
        self.check_inside(decision, path, "move")
        digest = file_digest(self.edits.root / path) if decision.sha256 else ""
        if digest != decision.sha256:
            self.skipped.append(f"{path}: another file than the one decided on")
            return
        index = self.keys[path]
        current = self.image_set.classes[self.image_set.labels[index]]
        if decision.action in ("none", "exclude"):
            folder = "excluded" if decision.action == "exclude" else "none"
            target = f"{REVIEW_FOLDER}/{folder}/{path}"
        elif decision.new == current:
            return
        else:
            target = self.class_folder_target(decision, path, index, current)
        self.check_inside(decision, target, "move to", own_folder=True)
        self.plan.append(_Planned("move", path, target, digest))

    def class_folder_target(self, decision: Decision, path: str, index: int, current: str) -> str:
        """Where a relabelled file goes: the same place under its new class's folder, in its split."""
        splits_of = self.image_set.splits
        split = splits_of[index] if splits_of is not None else "all"
        prefix = self.prefixes.get(split, "")
        rest = path[len(prefix) + 1 :] if prefix else path
        head, _, inside = rest.partition("/")
        if (prefix and not path.startswith(prefix + "/")) or head != current or not inside:
            raise self.refuse(decision, f"cannot tell the class folder of {path!r}")
        return "/".join(p for p in (prefix, decision.new, inside) if p)


def apply_to_folders(
    data: str | Path,
    decisions: Sequence[Decision],
    splits: str | None = "auto",
    review: str = "review.jsonl",
    read: Callable[[str], ImageSet] | None = None,
) -> Applied:
    """Carry the decisions out on a class-folder tree (see `plan_folder_changes`), each change
    through `FolderEdits`: recorded before it is made, never over a file, undone by
    `revert_folders`. The data is read (`read`, default `scan_source`) once the folder is locked and
    what an interrupted run left is settled, so the plan sees the files as they are."""
    from imgclf.data.sources import scan_source

    root = edit_root(data, splits)
    with FolderEdits(root) as edits:
        image_set = read(str(data)) if read is not None else scan_source(data, splits=splits)
        if image_set.layout not in ("class-folders", "split-folders"):
            raise UsageError("--apply moves files between class folders; this data is not class folders")
        if Path(image_set.reader.root).resolve() != edits.root:
            raise DataError(f"{data}: its images are read from {image_set.reader.root}, not {edits.root}")
        plan, skipped = plan_folder_changes(image_set, decisions, edits, splits, review)
        applied = Applied(edits.root, skipped=skipped, settled=edits.settled)
        for step in plan:
            if step.kind == "move":
                applied.moved.append((step.source, edits.move(step.source, step.target, step.digest)))
            else:
                applied.copied.append((step.source, edits.copy_in(step.source, step.target)))
    return applied


def revert_folders(data: str | Path, splits: str | None = "auto") -> RevertResult:
    """Undo what `apply_to_folders` did in `data`'s tree, the latest first (see `FolderEdits.revert`)."""
    root = edit_root(data, splits)
    if not (root / REVIEW_FOLDER / JOURNAL_FILE).is_file():
        raise UsageError(f"nothing to revert: {root} has no {REVIEW_FOLDER}/{JOURNAL_FILE}")
    with FolderEdits(root) as edits:
        return edits.revert()


def edit_root(data: str | Path, splits: str | None = "auto") -> Path:
    """The folder whose `.imgclf-review` holds the changes made to `data`: the root of its class or
    split folders (below single wrapper folders), or `data` itself when that holds the journal."""
    from imgclf.data.folders import data_root
    from imgclf.data.layout import find_layout

    folder = Path(data)
    if not folder.is_dir():
        raise UsageError(f"--revert puts back files in class folders; {folder} is not a folder")
    if (folder / REVIEW_FOLDER / JOURNAL_FILE).is_file():
        return folder
    return find_layout(data_root(folder), splits).root


def apply_to_table(
    table: str | Path, path_column: str, label_column: str, decisions: Sequence[Decision],
    review: str = "review.jsonl",
) -> Path:  # fmt: skip
    """A new CSV beside the old one (`<name>.reviewed.csv`, or `<name>.reviewed-2.csv` … when that
    name is taken: nothing is overwritten): relabelled rows with their new label, excluded and "not
    any class" rows left out; the old file is untouched. A new label keeps the class-name rules
    (a class may become a folder later), or nothing is written."""
    import pandas as pd

    table = Path(table)
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    verdicts = image_verdicts(decisions)
    for decision in verdicts.values():
        problem = name_problem(decision.new) if decision.new is not None else None
        if problem is not None and decision.action in ("relabel", "label"):
            raise DataError(
                f"{review}: {_describe(decision)}: class {decision.new!r}: {problem}; nothing written"
            )
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
    buffer = io.StringIO()
    frame[keep].to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL)
    return write_new_file(table.with_name(f"{table.stem}.reviewed.csv"), buffer.getvalue().encode("utf-8"))


def describe(decisions: Sequence[Decision]) -> dict[str, Any]:
    """How many decisions of each action are in force."""
    counts: dict[str, int] = {}
    for decision in current_decisions(decisions).values():
        counts[decision.action] = counts.get(decision.action, 0) + 1
    return counts
