"""Seeded, stratified train/val/test split, written to and read from `manifest.csv`."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from imgclf.data.imageset import SPLIT_NAMES, ImageSet
from imgclf.errors import DataError, UsageError
from imgclf.io import write_text_atomic

logger = logging.getLogger(__name__)


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign each sample a split name, class by class, so every split keeps the class proportions.

    scikit-learn's `train_test_split(stratify=…)` refuses classes with a single member; this keeps
    such a sample in training instead, and gives each split at least one sample of every class that
    has enough of them (n ≥ number of splits).
    """
    rng = np.random.default_rng(seed)
    assigned = np.full(len(labels), "train", dtype=object)
    names = [name for name, fraction in fractions.items() if fraction > 0]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        start = 0
        for name in names:
            count = round(fractions[name] * len(members))
            if count == 0 and len(members) > len(names):
                count = 1
            count = min(count, len(members) - start - 1)  # keep at least one for training
            if count <= 0:
                continue
            assigned[members[start : start + count]] = name
            start += count
    return assigned


def iterative_split(targets: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split names per sample of a multi-label set (`targets`: samples × labels, 0/1), so that every
    split holds each label in its proportion: iterative stratification (Sechidis, Tsoumakas and
    Vlahavas, 2011). The label with the fewest samples left is dealt first, each of its samples to
    the split that most lacks that label (ties: the split that lacks most samples, then at random);
    samples without any label fill the splits last. Seeded; "train" takes what the fractions leave.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets, dtype=bool)
    count = len(targets)
    names = ["train", *(name for name, fraction in fractions.items() if fraction > 0)]
    shares = np.asarray(
        [1.0 - sum(f for f in fractions.values() if f > 0)] + [fractions[n] for n in names[1:]]
    )
    wanted = shares * count  # samples each split still lacks
    wanted_label = np.outer(shares, targets.sum(axis=0)).astype(float)  # split × label
    assigned = np.full(count, -1)
    left = targets.copy()
    left_count = left.sum(axis=0)
    while left_count.any():
        label = min(np.flatnonzero(left_count), key=lambda i: (left_count[i], rng.random()))
        members = np.flatnonzero(left[:, label])
        rng.shuffle(members)
        for sample in members:
            need = wanted_label[:, label]
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:
                best = best[wanted[best] == wanted[best].max()]
            split = int(rng.choice(best))
            assigned[sample] = split
            wanted[split] -= 1
            wanted_label[split] -= targets[sample]
            left[sample] = False
        left_count = left.sum(axis=0)
    for sample in rng.permutation(np.flatnonzero(assigned < 0)):  # images with no label
        split = int(np.argmax(wanted))
        assigned[sample] = split
        wanted[split] -= 1
    return np.asarray(names, dtype=object)[assigned]


def assign_splits(image_set: ImageSet, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split names per sample: the layout's own splits where given, carved stratified otherwise.

    With train/ and test/ folders but no validation folder, validation is carved from train/ and
    test/ stays the test set. A multi-label set is split by `iterative_split`.
    """
    labels = image_set.labels

    def carve(rows: np.ndarray, fractions: dict[str, float]) -> np.ndarray:
        if image_set.targets is not None:  # a multi-label set: every label in every split
            return iterative_split(image_set.targets[rows], fractions, seed)
        return stratified_split(labels[rows], fractions, seed)

    if image_set.splits is None:
        return carve(np.arange(len(labels)), {"val": val_fraction, "test": test_fraction})
    given = np.asarray(image_set.splits, dtype=object)
    if "val" not in set(image_set.splits) and val_fraction > 0:
        train_index = np.flatnonzero(given == "train")
        carved = carve(train_index, {"val": val_fraction})
        given = given.copy()
        given[train_index] = carved
    return given


def write_manifest(path: str | Path, image_set: ImageSet, splits: np.ndarray) -> None:
    """manifest.csv: path (key in the data source), label (class name), split."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"])
    for key, label, split in zip(image_set.keys, image_set.labels.tolist(), splits):
        writer.writerow([key, image_set.classes[label], split])
    write_text_atomic(path, buffer.getvalue())


def read_manifest(path: str | Path) -> dict[str, tuple[str, str]]:
    """{key: (label, split)} from a manifest.csv."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label", "split"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have the columns path, label, split")
        entries = {}
        for row in reader:
            split = SPLIT_NAMES.get(row["split"].strip().lower())
            if split is None:
                raise DataError(f"{path}: split {row['split']!r} is not train, val or test")
            entries[row["path"]] = (row["label"], split)
    return entries


def apply_manifest(image_set: ImageSet, path: str | Path) -> tuple[ImageSet, np.ndarray]:
    """Keep the samples a manifest lists, with its splits; labels must agree with the data."""
    entries = read_manifest(path)
    keep: list[int] = []
    splits: list[str] = []
    for index, key in enumerate(image_set.keys):
        entry = entries.get(key)
        if entry is None:
            continue
        label, split = entry
        actual = image_set.classes[image_set.labels[index]]
        if label != actual:
            raise DataError(f"{key}: the manifest says class {label!r}, the data says {actual!r}")
        keep.append(index)
        splits.append(split)
    if not keep:
        raise DataError(f"no sample of the data is listed in the manifest {path}; is it for this data?")
    unlisted = len(image_set) - len(keep)
    missing = len(entries) - len(keep)
    if unlisted:
        logger.warning("%d images of the data are not in the manifest and are left out", unlisted)
    if missing:
        logger.warning("%d manifest entries were not found (or unreadable) in the data", missing)
    return image_set.subset(keep), np.asarray(splits, dtype=object)
