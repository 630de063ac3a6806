"""`imgclf check`: the data audit to run before training.

Every file is read once, in parallel processes: its content hash (exact duplicates), header (size,
mode, EXIF orientation), a full decode at reduced size (corrupt and truncated files), and a
perceptual hash plus a 16×16 thumbnail (near-duplicates such as a re-encoded or resized copy).
Findings have a level: error (the data is wrong: corrupt or missing files, an empty class, the same
image in two splits or under two classes), warning (worth a look) or info.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from imgclf.data.decode import (
    ImageDecodeError,
    decode_image,
    pillow_warnings_logged,
    read_bytes,
    read_header,
    to_channels,
)
from imgclf.data.imageset import ArrayReader, FileReader, ImageSet
from imgclf.data.sources import as_image_set
from imgclf.data.split import iterative_split

COMMON_MODES = frozenset({"L", "RGB"})
THUMB = 16  # first, coarse comparison of every cross-split pair
FINE = 32  # confirmation of the candidates (fine strokes tell look-alike digits apart)
# On 32×32 thumbnails scaled to unit contrast: no pixel of a copy is further than this many standard
# deviations from the original's (re-encoded or resized photos: at most 0.7; two handwritten 1s
# that correlate at 0.99: about 2)
MAX_PIXEL_DEVIATION = 1.0
EXHAUSTIVE_PAIRS = 4e9  # above this many pairs to compare, candidates come from the perceptual hash


@dataclass
class Finding:
    """One kind of problem with the files (or groups of files) that show it."""

    level: str  # error | warning | info
    kind: str
    message: str
    files: list[Any] = field(default_factory=list)


@dataclass
class AuditReport:
    """Everything `check` found; `to_dict()` is check.json."""

    source: str
    layout: str
    splits: dict[str, dict[str, Any]]
    sizes: dict[str, int]
    modes: dict[str, int]
    findings: list[Finding]
    seconds: float = 0.0
    files_read: int = 0
    description: str = ""  # the layout found, in one line
    label_summary: str = ""  # multi-label data: the labels, images per label, labels per image

    @property
    def has_errors(self) -> bool:
        return any(f.level == "error" for f in self.findings)

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def finding(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "layout": self.layout,
            "layout_found": self.description,
            "multi_label": self.label_summary,
            "seconds": round(self.seconds, 3),
            "files_read": self.files_read,
            "splits": self.splits,
            "sizes": self.sizes,
            "modes": self.modes,
            "errors": sum(f.level == "error" for f in self.findings),
            "warnings": sum(f.level == "warning" for f in self.findings),
            "findings": [asdict(f) for f in self.findings],
        }


@dataclass
class _FileFacts:
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    exif_rotated: bool = False
    dhash: int = 0
    thumb: bytes = b""  # FINE×FINE grayscale
    error: str = ""


def _difference_hash(gray: Image.Image) -> int:
    """64-bit dHash: is each pixel brighter than its right neighbour, on a 9×8 thumbnail."""
    pixels = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _inspect_image(image: Image.Image, facts: _FileFacts) -> None:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 1.0
        image = Image.fromarray((array * (255.0 / max(peak, 1e-9))).clip(0, 255).astype(np.uint8))
    gray = to_channels(image, 1)  # any mode (CIELab, HSV, premultiplied alpha …), as training reads it
    facts.dhash = _difference_hash(gray)
    facts.thumb = gray.resize((FINE, FINE), Image.Resampling.BOX).tobytes()


def _inspect_file(path: str) -> _FileFacts:
    facts = _FileFacts()
    try:
        data = read_bytes(path)  # a file's, or a Parquet row's
    except OSError as error:
        facts.error = f"cannot read: {error}"
        return facts
    facts.sha256 = hashlib.sha256(data).hexdigest()
    try:
        header = read_header(data, name=path)
        facts.width, facts.height, facts.mode, facts.exif_rotated = (
            header.width,
            header.height,
            header.mode,
            header.exif_rotated,
        )
        with pillow_warnings_logged(path):
            _inspect_image(decode_image(data, draft_size=(64, 64), name=path), facts)
    except ImageDecodeError as error:
        facts.error = str(error)
    return facts


def _inspect_chunk(paths: list[str]) -> list[_FileFacts]:
    return [_inspect_file(path) for path in paths]


def _inspect_array(reader: ArrayReader, key: str) -> _FileFacts:
    array = np.ascontiguousarray(reader.images[int(key.split(":", 1)[1])])
    facts = _FileFacts(sha256=hashlib.sha256(array.tobytes()).hexdigest())
    header = reader.header(key)
    facts.width, facts.height, facts.mode = header.width, header.height, header.mode
    _inspect_image(reader.open(key), facts)
    return facts


def inspect_files(image_set: ImageSet, workers: int | None = None) -> list[_FileFacts]:
    """Facts for every sample, read in parallel processes (one chunk of files per task)."""
    if isinstance(image_set.reader, ArrayReader):
        return [_inspect_array(image_set.reader, key) for key in image_set.keys]
    reader: FileReader = image_set.reader
    paths = [reader.location(key) for key in image_set.keys]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    chunk = 256
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        return [facts for part in chunks for facts in _inspect_chunk(part)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [facts for part in pool.map(_inspect_chunk, chunks) for facts in part]


def _unit_rows(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-6)


def _coarse(fine: np.ndarray) -> np.ndarray:
    """FINE×FINE thumbnails → THUMB×THUMB by averaging blocks."""
    factor = FINE // THUMB
    return fine.reshape(len(fine), THUMB, factor, THUMB, factor).mean(axis=(2, 4)).reshape(len(fine), -1)


def _near_duplicate_pairs(
    fine_a: np.ndarray,
    hashes_a: np.ndarray,
    fine_b: np.ndarray,
    hashes_b: np.ndarray,
    min_correlation: float,
    same: bool = False,
) -> list[tuple[int, int, float]]:
    """(index in a, index in b, correlation) of images that are copies of each other.

    Every pair is compared on 16×16 thumbnails with one matrix product per block (or, for very large
    sets, only the pairs whose perceptual hashes are close); candidates are confirmed on 32×32
    thumbnails, by correlation and by the largest pixel difference, so look-alike but different
    images (two handwritten ones) are not flagged. With `same` (a and b are one set), each pair
    comes once, with index in a < index in b.
    """
    pairs: list[tuple[int, int, float]] = []
    if not len(fine_a) or not len(fine_b):
        return pairs
    coarse_a, coarse_b = _unit_rows(_coarse(fine_a)), _unit_rows(_coarse(fine_b))
    compared = len(fine_a) * (len(fine_a) - 1) / 2 if same else len(fine_a) * len(fine_b)
    exhaustive = compared <= EXHAUSTIVE_PAIRS
    candidate_threshold = min_correlation - 0.01
    block = 1024
    for start in range(0, len(fine_b), block):
        stop = min(start + block, len(fine_b))
        width = stop if same else len(fine_a)  # one set: the pairs with a below b are enough
        if exhaustive:
            similarity = coarse_b[start:stop] @ coarse_a[:width].T
            rows, columns = np.nonzero(similarity >= candidate_threshold)
        else:
            distances = np.bitwise_count(hashes_b[start:stop, None] ^ hashes_a[None, :width])
            rows, columns = np.nonzero(distances <= 10)
            keep = np.einsum("ij,ij->i", coarse_b[start + rows], coarse_a[columns]) >= candidate_threshold
            rows, columns = rows[keep], columns[keep]
        if same:
            below = columns < start + rows
            rows, columns = rows[below], columns[below]
        if not len(rows):
            continue
        unit_b, unit_a = _unit_rows(fine_b[start + rows]), _unit_rows(fine_a[columns])
        fine = np.einsum("ij,ij->i", unit_b, unit_a)
        # a copy changes every pixel a little; another picture (a stroke moved) changes some a lot
        deviation = np.abs(unit_b - unit_a).max(axis=1) * np.sqrt(unit_a.shape[1])
        for row, column, value, apart in zip(
            rows.tolist(), columns.tolist(), fine.tolist(), deviation.tolist()
        ):
            if value >= min_correlation and apart <= MAX_PIXEL_DEVIATION:
                pairs.append((column, start + row, value))
    return pairs


@dataclass
class AuditedFiles:
    """What the checks share: the samples, what reading each file found, its split, the readable ones."""

    image_set: ImageSet
    facts: list[Any]  # FileFacts, one per sample
    splits: list[str]
    good: list[int]  # samples whose file decoded

    def entry(self, i: int) -> dict[str, Any]:
        return {"path": self.image_set.keys[i], "split": self.splits[i], "label": self.label(i)}

    def label(self, i: int) -> str:
        return self.image_set.classes[self.image_set.labels[i]]


def audit(
    data: str | Path | ImageSet,
    *,
    path_col: str | None = None,
    label_col: str | None = None,
    images: str | None = None,
    multi_label: bool | None = None,
    workers: int | None = None,
    imbalance_threshold: float = 10.0,
    min_class_size: int = 10,
    tiny_size: int = 32,
    near_correlation: float = 0.99,
    splits: str = "auto",
) -> AuditReport:
    """Check a data source for everything that spoils training; see the module docstring.

    `splits` says which folders are splits, as `train --splits` does.
    """
    started = time.perf_counter()
    image_set = as_image_set(
        data, path_col=path_col, label_col=label_col, images=images, multi_label=multi_label, splits=splits
    )
    facts = inspect_files(image_set, workers)
    split_of = list(image_set.splits) if image_set.splits is not None else ["all"] * len(image_set)
    files = AuditedFiles(image_set, facts, split_of, [i for i, f in enumerate(facts) if not f.error])
    split_summary = count_splits(files)
    findings = check_unreadable(files)
    if image_set.multi_label:
        findings += check_label_sets(files, min_class_size)
    else:
        findings += check_classes(files, min_class_size, imbalance_threshold)
    exact, groups, exact_pairs = check_exact_duplicates(files)
    near, near_pairs = check_near_duplicates(files, list(split_summary), exact_pairs, near_correlation)
    findings += exact + near + check_conflicting_labels(files, groups, near_pairs)
    sizes: dict[str, int] = defaultdict(int)
    modes: dict[str, int] = defaultdict(int)
    for i in files.good:
        sizes[f"{facts[i].width}x{facts[i].height}"] += 1
        modes[facts[i].mode] += 1
    findings += check_images(files, tiny_size)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.level])
    return AuditReport(
        source=str(image_set.source),
        layout=image_set.layout,
        splits=split_summary,
        sizes=dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        modes=dict(modes),
        findings=findings,
        seconds=time.perf_counter() - started,
        files_read=len(facts),
        description=image_set.description,
        label_summary=image_set.label_summary,
    )


# the split `check` tries on multi-label data: train's default validation share, no test split
CHECK_SPLIT = {"val": 0.2}


def check_label_sets(files: AuditedFiles, min_label_size: int) -> list[Finding]:
    """Multi-label data: labels with few images, and labels a seeded iterative split cannot put in
    every split (training needs each label in train, and choosing its threshold needs it in
    validation), unless the data's own splits already hold them."""
    image_set, findings = files.image_set, []
    assert image_set.targets is not None and image_set.label_names is not None
    good = np.asarray(files.good, dtype=int)
    targets = image_set.targets[good] if len(good) else np.zeros((0, len(image_set.label_names)))
    totals = targets.sum(axis=0)
    names = image_set.label_names
    small = [{"label": n, "images": int(c)} for n, c in zip(names, totals) if c < min_label_size]
    if small:
        findings.append(
            Finding("warning", "small-label", f"labels with fewer than {min_label_size} images", small)
        )
    given = np.asarray(files.splits, dtype=object)[good]
    splits = given if "val" in set(given.tolist()) else iterative_split(targets, CHECK_SPLIT, 0)
    absent = []
    for split in ("train", "val"):
        held = targets[splits == split].sum(axis=0)
        absent += [
            {"label": n, "split": split, "images": int(c)} for n, c, h in zip(names, totals, held) if not h
        ]
    if absent:
        how = "the data's own splits" if splits is given else "a seeded split of 20% for validation"
        findings.append(
            Finding(
                "warning",
                "label-missing-from-split",
                f"labels that {how} leave out of training or validation: too few images to learn "
                "them and choose their thresholds",
                absent,
            )
        )
    return findings


def check_unreadable(files: AuditedFiles) -> list[Finding]:
    """Files the scan left out (missing, not images) and files that do not decode."""
    findings = []
    by_kind: dict[str, list[Any]] = defaultdict(list)
    for problem in files.image_set.problems:
        by_kind[problem.kind].append({"path": problem.path, "reason": problem.reason})
    if by_kind["missing"]:
        findings.append(
            Finding("error", "missing-file", "listed in the table but not found", by_kind["missing"])
        )
    if by_kind["non-image"]:
        findings.append(
            Finding("warning", "non-image", "not image files (skipped by imgclf)", by_kind["non-image"])
        )
    keys = files.image_set.keys
    corrupt = [{"path": keys[i], "reason": f.error} for i, f in enumerate(files.facts) if f.error]
    corrupt += by_kind["corrupt"]
    if corrupt:
        findings.append(
            Finding("error", "corrupt", "corrupt or truncated images (left out by imgclf)", corrupt)
        )
    return findings


def count_splits(files: AuditedFiles) -> dict[str, dict[str, Any]]:
    """Readable images per split and class (per split and label for multi-label data: "labels")."""
    image_set, summary = files.image_set, {}
    for split in sorted(set(files.splits), key=["train", "val", "test", "all"].index):
        members = [i for i in files.good if files.splits[i] == split]
        if image_set.targets is not None and image_set.label_names is not None:
            per_label = (
                image_set.targets[members].sum(axis=0) if members else [0] * len(image_set.label_names)
            )
            counts = {"labels": {name: int(c) for name, c in zip(image_set.label_names, per_label)}}
        else:
            per_class = np.bincount(image_set.labels[members], minlength=len(image_set.classes))
            counts = {"classes": {name: int(c) for name, c in zip(image_set.classes, per_class)}}
        summary[split] = {"images": len(members), **counts}
    return summary


def check_classes(files: AuditedFiles, min_class_size: int, imbalance_threshold: float) -> list[Finding]:
    """Empty and small classes, and imbalance."""
    image_set, findings = files.image_set, []
    totals = (
        np.bincount(image_set.labels[files.good], minlength=len(image_set.classes))
        if files.good
        else np.zeros(len(image_set.classes), dtype=int)
    )
    empty = [name for name, count in zip(image_set.classes, totals) if count == 0]
    if empty:
        findings.append(Finding("error", "empty-class", "classes with no usable image", empty))
    small = [
        {"class": name, "images": int(count)}
        for name, count in zip(image_set.classes, totals)
        if 0 < count < min_class_size
    ]
    if small:
        findings.append(
            Finding("warning", "small-class", f"classes with fewer than {min_class_size} images", small)
        )
    present = totals[totals > 0]
    if len(present) > 1 and present.max() / present.min() > imbalance_threshold:
        ratio = float(present.max() / present.min())
        findings.append(
            Finding(
                "warning",
                "imbalance",
                f"largest class has {ratio:.1f}× the images of the smallest "
                f"(threshold {imbalance_threshold:g}); consider --class-weight auto",
                [{"ratio": round(ratio, 2)}],
            )
        )
    return findings


def check_exact_duplicates(
    files: AuditedFiles,
) -> tuple[list[Finding], dict[str, list[int]], set[tuple[int, int]]]:
    """Identical files (by content hash) across and within splits; also returns the groups of
    identical files and every ordered pair of them."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i in files.good:
        groups[files.facts[i].sha256].append(i)
    across, within, findings = [], [], []
    pairs: set[tuple[int, int]] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        entry = [files.entry(i) for i in members]
        (across if len({files.splits[i] for i in members}) > 1 else within).append(entry)
        pairs |= {(a, b) for a in members for b in members if a != b}
    if across:
        findings.append(
            Finding(
                "error", "duplicate-across-splits", "identical files in more than one split (leakage)", across
            )
        )
    if within:
        findings.append(
            Finding("warning", "duplicate-within-split", "identical files within a split", within)
        )
    return findings, groups, pairs


def check_near_duplicates(
    files: AuditedFiles, split_names: list[str], exact_pairs: set[tuple[int, int]], near_correlation: float
) -> tuple[list[Finding], set[tuple[int, int]]]:
    """Look-alike images across and within splits (perceptual hash, confirmed on thumbnails); also
    returns the pairs found."""
    facts, keys = files.facts, files.image_set.keys
    hashes = np.array([f.dhash for f in facts], dtype=np.uint64)
    thumbs = np.frombuffer(b"".join(f.thumb or bytes(FINE * FINE) for f in facts), dtype=np.uint8)
    thumbs = thumbs.reshape(len(facts), FINE * FINE).astype(np.float32)
    members_of = {
        name: np.asarray([i for i in files.good if files.splits[i] == name], dtype=np.int64)
        for name in split_names
    }
    near, near_within = [], []
    pairs: set[tuple[int, int]] = set()
    for position, first in enumerate(split_names):
        for second in split_names[position:]:
            index_a, index_b = members_of[first], members_of[second]
            found = _near_duplicate_pairs(
                thumbs[index_a],
                hashes[index_a],
                thumbs[index_b],
                hashes[index_b],
                near_correlation,
                same=first == second,
            )
            for a, b, correlation in found:
                ia, ib = int(index_a[a]), int(index_b[b])
                if (ia, ib) in exact_pairs:
                    continue
                pairs.add((ia, ib))
                entry = {
                    "paths": [keys[ia], keys[ib]],
                    "splits": [first, second],
                    "correlation": round(correlation, 4),
                }
                (near if first != second else near_within).append(entry)
    findings = []
    if near:
        message = "look-alike images in two splits (re-encoded, resized or edited copies)"
        findings.append(Finding("warning", "near-duplicate-across-splits", message, near))
    if near_within:
        message = "look-alike images within a split (a split imgclf makes can put them on both sides)"
        findings.append(Finding("warning", "near-duplicate-within-split", message, near_within))
    return findings, pairs


def check_conflicting_labels(
    files: AuditedFiles, groups: dict[str, list[int]], near_pairs: set[tuple[int, int]]
) -> list[Finding]:
    """The same picture under two classes (identical or look-alike): one of the labels is wrong."""
    labels, keys = files.image_set.labels, files.image_set.keys
    conflicting = []
    for members in groups.values():
        if len(members) > 1 and len({int(labels[i]) for i in members}) > 1:
            conflicting.append(
                {
                    "paths": [keys[i] for i in members],
                    "labels": [files.label(i) for i in members],
                    "copy": "identical",
                }
            )
    for ia, ib in sorted(near_pairs):
        if labels[ia] != labels[ib]:
            conflicting.append(
                {
                    "paths": [keys[ia], keys[ib]],
                    "labels": [files.label(ia), files.label(ib)],
                    "copy": "look-alike",
                }
            )
    if not conflicting:
        return []
    message = "the same image under different classes (identical or look-alike): a label is wrong"
    if files.image_set.multi_label:
        message = (
            "the same image with different label sets (identical or look-alike): a label is wrong or missing"
        )
    return [Finding("error", "conflicting-labels", message, conflicting)]


def check_images(files: AuditedFiles, tiny_size: int) -> list[Finding]:
    """Per-image observations: tiny images, EXIF rotation, unusual modes."""
    facts, keys, findings = files.facts, files.image_set.keys, []
    tiny = [keys[i] for i in files.good if min(facts[i].width, facts[i].height) < tiny_size]
    if tiny:
        findings.append(Finding("warning", "tiny-image", f"images under {tiny_size} px on a side", tiny))
    rotated = [keys[i] for i in files.good if facts[i].exif_rotated]
    if rotated:
        findings.append(Finding("info", "exif-rotated", "EXIF says to rotate these (imgclf does)", rotated))
    unusual = [
        {"path": keys[i], "mode": facts[i].mode} for i in files.good if facts[i].mode not in COMMON_MODES
    ]
    if unusual:
        modes = ", ".join(sorted({u["mode"] for u in unusual}))
        message = f"modes other than L and RGB (converted on load: {modes})"
        findings.append(Finding("info", "unusual-mode", message, unusual))
    return findings


def summarize_files(files: Sequence[Any], limit: int = 3) -> str:
    """A short text naming the first few files of a finding."""
    names = []
    for item in files[:limit]:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and "path" in item:
            names.append(str(item["path"]))
        elif isinstance(item, dict) and "labels" in item:
            labelled = zip(item["paths"], item["labels"])
            names.append(" vs ".join(f"{path} ({label})" for path, label in labelled))
        elif isinstance(item, dict) and "paths" in item:
            names.append(" ≈ ".join(item["paths"]))
        elif isinstance(item, dict) and "class" in item:
            names.append(f"{item['class']} ({item['images']})")
        elif isinstance(item, list):
            names.append(" = ".join(entry["path"] for entry in item))
        elif isinstance(item, dict) and "ratio" in item:
            names.append(f"ratio {item['ratio']}")
        else:
            names.append(str(item))
    more = f" … +{len(files) - limit}" if len(files) > limit else ""
    return "; ".join(names) + more
