"""What `imgclf review` shows, ranked by how much fixing it is worth.

Every finding of the data check and the label check becomes one item: corrupt files, the same image
under two classes, identical or look-alike copies in two splits, likely wrong labels (confident
learning: `imgclf.features.label_issues`), and with a model its confident mistakes on validation;
with `--new`, the unlabelled images whose label would teach the model most (uncertainty sampling:
those it answers `unknown` or with the smallest margin between its two best classes).

An item's `worth` orders the page. A conflicting label is certainly wrong on one side (1.0); an
unreadable file spoils nothing but is cheap to settle (0.9); a likely wrong label is worth what its
given label lacks of the out-of-sample probability (1 - quality); a confident mistake on validation
its confidence, a little below a label issue of the same strength (the label check already saw
most of them); leakage across splits 0.5. New images come after every finding on the labelled data,
in order of uncertainty.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.decode import is_image_file
from imgclf.data.imageset import ImageSet

logger = logging.getLogger(__name__)

KINDS = {
    "conflicting-labels": "the same image under two classes",
    "corrupt": "a file that does not decode",
    "label-issue": "a likely wrong label",
    "mistake": "a confident mistake of the model on validation",
    "duplicate-across-splits": "identical files in two splits (leakage)",
    "near-duplicate-across-splits": "look-alike copies in two splits",
    "new": "a new image the model is least sure of",
}
MISTAKE_SHARE = 0.9  # a confident mistake's worth, as a share of its confidence
NEIGHBOURS = 6


@dataclass
class Item:
    """One thing to decide about one image."""

    id: str  # "<kind>:<path>": a decision names it
    kind: str
    path: str  # the image's key in the data source; for a new image its absolute path
    location: str  # where the file is
    label: str | None  # its label now (None for a new image)
    suggestion: str | None  # what imgclf thinks it is
    worth: float
    note: str = ""
    sample: int | None = None  # its index in the reviewed image set
    related: list[str] = field(default_factory=list)  # the other copies, for duplicates
    score: float | None = None  # the evidence: a label's out-of-sample probability, a confidence

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("location")
        return values


def audit_items(image_set: ImageSet, report: Any) -> list[Item]:
    """The data check's findings about single images, as items."""
    index = {key: i for i, key in enumerate(image_set.keys)}
    items: list[Item] = []

    def label_of(key: str) -> str | None:
        i = index.get(key)
        return image_set.classes[image_set.labels[i]] if i is not None else None

    for finding in report.findings:
        if finding.kind == "corrupt":
            for entry in finding.files:
                key = entry["path"]
                location = image_set.location(index[key]) if key in index else key
                items.append(Item(f"corrupt:{key}", "corrupt", key, location, label_of(key), None, 0.9,
                                  entry.get("reason", ""), index.get(key)))  # fmt: skip
        elif finding.kind == "conflicting-labels":
            for entry in finding.files:
                paths = entry["paths"]
                labels = entry.get("labels") or [label_of(p) for p in paths]
                for key, label in zip(paths, labels):
                    others = [p for p in paths if p != key]
                    other_labels = sorted({lab for p, lab in zip(paths, labels) if p != key and lab != label})
                    location = image_set.location(index[key])
                    items.append(Item(
                        f"conflicting-labels:{key}", "conflicting-labels", key, location,
                        label, other_labels[0] if other_labels else None, 1.0,
                        f"also filed as {', '.join(other_labels)}", index[key], others,
                    ))  # fmt: skip
        elif finding.kind in ("duplicate-across-splits", "near-duplicate-across-splits"):
            for entry in finding.files:
                paths = [e["path"] for e in entry] if isinstance(entry, list) else entry["paths"]
                key = paths[-1]  # the copy outside training, usually: the one to leave out
                items.append(Item(
                    f"{finding.kind}:{key}", finding.kind, key, image_set.location(index[key]), label_of(key),
                    None, 0.5, KINDS[finding.kind], index.get(key), paths[:-1],
                ))  # fmt: skip
    return items


def label_issue_items(issues: Any, image_set: ImageSet) -> list[Item]:
    """Likely wrong labels, with the label the image looks like."""
    index = {key: i for i, key in enumerate(image_set.keys)}
    return [
        Item(
            f"label-issue:{issue.path}",
            "label-issue",
            issue.path,
            image_set.location(index[issue.path]),
            issue.given,
            issue.suggested,
            1.0 - issue.quality,
            f"out-of-sample probability of {issue.given}: {issue.quality:.2f}",
            index[issue.path],
            score=issue.quality,
        )
        for issue in issues.issues
        if issue.path in index
    ]


def mistake_items(
    predictor: Any, image_set: ImageSet, splits: np.ndarray, min_confidence: float = 0.5
) -> list[Item]:
    """The model's mistakes on the validation split, at least `min_confidence` sure."""
    rows = np.flatnonzero(splits == "val")
    if not len(rows):
        return []
    items = []
    paths = [image_set.location(int(i)) for i in rows]
    for i, prediction in zip(rows, predictor.predict(paths, top_k=2)):
        if prediction.error or not prediction.labels:
            continue
        given = image_set.classes[image_set.labels[i]]
        answer, confidence = prediction.labels[0], prediction.probabilities[0]
        if answer != given and confidence >= min_confidence:
            key = image_set.keys[i]
            items.append(Item(
                f"mistake:{key}", "mistake", key, paths[list(rows).index(i)], given, answer,
                MISTAKE_SHARE * confidence, f"the model answers {answer} ({confidence:.2f})", int(i),
                score=confidence,
            ))  # fmt: skip
    return items


def new_image_paths(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and
        not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def new_items(predictor: Any, folder: str | Path, limit: int | None = None) -> list[Item]:
    """Unlabelled images, the least sure first: those the model answers `unknown`, then by the
    margin between its two best classes (uncertainty sampling), each with the model's answer."""
    paths = new_image_paths(folder)
    scored = []
    for path, prediction in zip(paths, predictor.predict([str(p) for p in paths], top_k=2)):
        if prediction.error or not prediction.labels:
            continue
        margin = prediction.probabilities[0] - (
            prediction.probabilities[1] if len(prediction.probabilities) > 1 else 0
        )
        uncertainty = 1.0 - margin + (1.0 if prediction.unknown else 0.0)
        note = f"the model answers {prediction.labels[0]} ({prediction.probabilities[0]:.2f})"
        if prediction.unknown:
            note = f"the model answers unknown: {prediction.unknown}"
        scored.append(
            (uncertainty, str(path.resolve()), prediction.labels[0], note, prediction.probabilities[0])
        )
    scored.sort(key=lambda entry: -entry[0])
    items = [
        Item(f"new:{path}", "new", path, path, None, answer, uncertainty / 2.0 - 1.0, note, score=confidence)
        for uncertainty, path, answer, note, confidence in scored
    ]  # worth below every finding on labelled data: new images come last
    return items[:limit] if limit else items


def rank(items: Sequence[Item]) -> list[Item]:
    """One item per image, the most worth first. Findings that agree on an image add up as
    independent evidence (worth 1 - Π(1 - wᵢ): a likely wrong label that the model also gets
    confidently wrong comes before either alone); the item keeps the strongest finding's kind and
    suggestion, and names the others in its note."""
    by_path: dict[str, list[Item]] = {}
    for item in items:
        by_path.setdefault(item.path, []).append(item)
    merged = []
    for found in by_path.values():
        found.sort(key=lambda item: -item.worth)
        first = found[0]
        if len(found) > 1 and first.kind != "new":
            doubt = 1.0
            for item in found:
                doubt *= 1.0 - max(0.0, min(item.worth, 1.0))
            others = "; ".join(f"also {KINDS.get(item.kind, item.kind)}" for item in found[1:])
            first = replace(
                first, worth=1.0 - doubt, note=f"{first.note}; {others}" if first.note else others
            )
        merged.append(first)
    return sorted(merged, key=lambda item: -item.worth)


def nearest_training_images(
    features: np.ndarray, splits: np.ndarray, sample: int, count: int = NEIGHBOURS
) -> list[int]:
    """The training images most like sample `sample` (cosine similarity of their features)."""
    train = np.flatnonzero(splits == "train")
    train = train[train != sample]
    if not len(train):
        return []
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit[train] @ unit[sample]
    return [int(i) for i in train[np.argsort(-similarity)[:count]]]
