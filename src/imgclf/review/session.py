"""A review session: the data, its findings ranked, the decisions made so far (review.jsonl), and
what the page asks about an item (its image, the nearest training images, the Grad-CAM heatmap).

`open_review` does the slow part once (the data check, the label check's features, the model's
mistakes and its answers on `--new` images); every decision afterwards is one appended line.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf import runs
from imgclf.config import DataConfig
from imgclf.data.decisions import (
    Decision,
    DecisionLog,
    apply_to_folders,
    apply_to_table,
    current_decisions,
    read_decisions,
    revert_folders,
)
from imgclf.data.decode import decode_image
from imgclf.data.imageset import ImageSet
from imgclf.data.safe_files import check_class_name, file_digest
from imgclf.data.sources import data_edits, recognise_source, source_query
from imgclf.errors import UsageError
from imgclf.review.findings import (
    Item,
    audit_items,
    label_issue_items,
    mistake_items,
    nearest_training_images,
    new_items,
    rank,
)

logger = logging.getLogger(__name__)

SHOWN_SIDE = 768  # the page shows images up to this size (re-encoded: nothing but pixels leaves)


@dataclass
class ReviewSession:
    """Everything the review page works on."""

    source: str
    image_set: ImageSet
    splits: np.ndarray
    items: list[Item]
    log: DecisionLog
    classes: list[str]
    features: np.ndarray | None = None  # per sample of image_set (NaN rows: unreadable)
    predictor: Any = None  # the model given with --model
    explainer: Any = None
    table: tuple[str, str, str] | None = None  # (CSV, path column, label column) of a table source
    cfg: DataConfig = field(default_factory=DataConfig)  # how the data was read (apply reads it again)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self) -> dict[str, Any]:
        """What the page shows: the classes, and every item with the decision in force on it."""
        decided = current_decisions(self.log.read())
        return {
            "source": self.source,
            "classes": self.state_classes(),
            "review": str(self.log.path),
            "model": bool(self.predictor is not None),
            "explain": self.explainer is not None,
            "apply": data_edits(self.source, self.cfg.splits),
            "items": [
                {**item.to_dict(), "number": number, "decision": _decision_dict(decided.get(item.id))}
                for number, item in enumerate(self.items)
            ],
        }

    def item(self, number: int) -> Item:
        if not 0 <= number < len(self.items):
            raise UsageError(f"no item {number}")
        return self.items[number]

    def decide(self, number: int, action: str, label: str | None = None, new_class: bool = False) -> Decision:
        """Record a decision on item `number` (durably, before this returns). A label must be one of
        the classes the page shows, or with `new_class` a new one the user named (one folder name,
        not hidden); a class the data lacks is recorded as created on purpose."""
        item = self.item(number)
        if action == "undo":
            decision = Decision(item.id, "undo", item.path, finding=item.kind)
        else:
            new = label
            if action == "relabel" or action == "label":
                new = label or item.suggestion
                if not new:
                    raise UsageError("relabel to which class? this finding suggests none")
                if new_class:
                    check_class_name(new)
                elif new not in self.state_classes():
                    raise UsageError(f"{new!r} is not one of the classes; name a new class on purpose")
                new_class = new not in self.image_set.classes
            elif action in ("keep", "none", "exclude"):
                new, new_class = None, False
            digest = file_digest(item.location) if Path(item.location).is_file() else ""
            decision = Decision(
                item.id, action, item.path, digest, item.kind, item.label, new, new_class=new_class
            )
        with self.lock:
            self.log.append(decision)
        return decision

    def state_classes(self) -> list[str]:
        """The classes the page offers: the data's, the model's, and those created in this review."""
        created = [
            d.new for d in current_decisions(self.log.read()).values() if d.new_class and d.new is not None
        ]
        return self.classes + [c for c in dict.fromkeys(created) if c not in self.classes]

    def undo_last(self) -> Decision | None:
        """Take back the latest decision still in force, whichever item it was on."""
        decided = current_decisions(self.log.read())
        if not decided:
            return None
        last = max(decided.values(), key=lambda d: d.time)
        number = next((n for n, item in enumerate(self.items) if item.id == last.item), None)
        return self.decide(number, "undo") if number is not None else None

    def image_bytes(self, location: str) -> bytes:
        """The image as JPEG (PNG for grey and small ones), at most SHOWN_SIDE on a side."""
        image = decode_image(location)
        image.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        small = max(image.size) < 128 or image.mode == "L"
        if small and max(image.size) < 256:  # digits: enlarge, crisp
            factor = max(1, 256 // max(image.size))
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        image.save(buffer, format="PNG" if small else "JPEG", quality=90)
        return buffer.getvalue()

    def neighbours(self, number: int) -> list[dict[str, Any]]:
        """The training images most like the item's (from the label check's features)."""
        item = self.item(number)
        if self.features is None or item.sample is None or not np.isfinite(self.features[item.sample]).all():
            return []
        readable = np.isfinite(self.features).all(1)
        splits = np.where(readable, self.splits, "unreadable")
        found = nearest_training_images(np.nan_to_num(self.features), splits, item.sample)
        return [
            {
                "sample": int(i),
                "label": self.image_set.classes[self.image_set.labels[i]],
                "path": self.image_set.keys[i],
            }
            for i in found
        ]

    def heatmap(self, number: int, class_name: str | None = None) -> bytes:
        """Grad-CAM of the model for the item's suggestion (or `class_name`), as PNG."""
        from imgclf.inference.explain import explanation_png

        if self.explainer is None:
            raise UsageError("heatmaps need the model: start the review with --model RUN")
        item = self.item(number)
        chosen = class_name or item.suggestion or item.label
        if chosen not in self.predictor.classes:
            chosen = None  # a class the model does not know: its own answer
        result = next(iter(self.explainer.explain([item.location], class_name=chosen)))
        if getattr(result, "error", None):
            raise UsageError(result.error)
        return explanation_png(result)

    def apply(self) -> str:
        """Carry the decisions out (see `apply_decisions`); the lines joined as one message."""
        return "; ".join(apply_decisions(self.source, self.log.path, self.cfg))

    def revert(self) -> str:
        if self.table is not None:
            raise UsageError("a table's review writes a new CSV beside it; there is nothing to put back")
        return "; ".join(revert_changes(self.source, self.cfg))


def apply_decisions(data: str | Path, review: str | Path, cfg: DataConfig) -> list[str]:
    """Carry a review's decisions out on the data, scanned afresh: changes to class folders (each
    through `imgclf.data.edits`, undone by `revert_changes`), or a new CSV beside a table. Returns
    the lines to show, what was done first."""
    from imgclf.data.prepared import load_data

    decisions = read_decisions(review)
    edits = data_edits(data, cfg.splits)  # how this kind of data is changed: its source says
    if edits == "table":
        image_set = load_data(str(data), cfg)
        out = apply_to_table(image_set.source, *_table_columns(image_set), decisions, Path(review).name)
        return [f"wrote {out} (the old table is untouched)"]
    if edits != "folders":
        entry = recognise_source(source_query(data, None, None, None, None, None, cfg.splits))
        noun = entry.declared.get("NOUN", "this data") if entry is not None else "this data"
        raise UsageError(
            "--apply changes class folders or writes a reviewed CSV beside a table; "
            f"{noun} is neither: the decisions stay in {Path(review).name} (an archive: unpack it and "
            "review the folder)"
        )
    read = functools.partial(load_data, cfg=cfg)  # again, once the folder is locked
    applied = apply_to_folders(data, decisions, cfg.splits, Path(review).name, read)
    lines = [f"{applied.summary()} (imgclf review {data} --revert puts them back)"]
    return lines + [f"settled what an interrupted run left: {line}" for line in applied.settled]


def revert_changes(data: str | Path, cfg: DataConfig) -> list[str]:
    """Put back what an applied review changed in class folders. Returns the lines to show: what
    was put back, then each change that could not be undone and why (kept for a later try)."""
    result = revert_folders(data, cfg.splits)
    return [f"put back {result.undone} files in {data}"] + [f"not undone: {line}" for line in result.kept]


def _decision_dict(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {"action": decision.action, "new": decision.new, "time": decision.time}


def open_review(
    data: str | Path,
    *,
    model: str | Path | None = None,
    new: str | Path | None = None,
    review: str | Path = "review.jsonl",
    cfg: DataConfig | None = None,
    label_check: bool = True,
    device: str = "auto",
) -> ReviewSession:
    """Scan `data`, find what needs a human (see `imgclf.review.findings`), rank it and open the
    decisions log. `model`: a run (or model) folder, whose manifest gives the splits and whose
    network gives the label check's features, its mistakes, heatmaps and the `new` images' ranking."""
    from imgclf.data.audit import audit
    from imgclf.data.headers import read_headers
    from imgclf.data.prepared import header_workers, load_data
    from imgclf.features.label_issues import find_label_issues

    cfg = cfg or DataConfig()
    image_set = load_data(str(data), cfg)
    image_set = read_headers(image_set, workers=header_workers(len(image_set), None))
    if model is None and new is not None:
        raise UsageError("--new ranks new images by the model's answers: give the model with --model RUN")
    predictor, explainer, run_dir = (
        _reviewed_model(model, device) if model is not None else (None, None, None)
    )
    splits = _review_splits(image_set, run_dir)
    logger.info("checking %s: %d images", data, len(image_set))
    items: list[Item] = audit_items(image_set, audit(image_set))
    features, label_features = _run_features(predictor, image_set)
    if label_check and len(image_set.classes) >= 2:
        # Out-of-sample probabilities need features that never learnt the labels under review: the
        # offline pretrained backbone's, not those of a network trained on these very labels (a
        # scratch CNN on 120 shapes with 8 flipped found 4 of them with its own features).
        issues = find_label_issues(image_set, device=device, features=label_features)
        items += label_issue_items(issues, image_set)
        if features is None and issues.features is not None:  # aligned with the readable images
            features = np.full((len(image_set), issues.features.shape[1]), np.nan, np.float32)
            position = {key: i for i, key in enumerate(image_set.keys)}
            for row, key in enumerate(issues.image_set.keys):
                features[position[key]] = issues.features[row]
    if predictor is not None:
        items += mistake_items(predictor, image_set, splits)
        if new is not None:
            items += new_items(predictor, new)
    ranked = rank(items)
    classes = list(image_set.classes)
    if predictor is not None:
        classes += [c for c in predictor.classes if c not in classes]
    table = None
    if data_edits(data, cfg.splits) == "table":  # its source says how it is changed
        table = (str(image_set.source), *_table_columns(image_set))
    return ReviewSession(
        str(data),
        image_set,
        splits,
        ranked,
        DecisionLog(review),
        classes,
        features,
        predictor,
        explainer,
        table,
        cfg,
    )


def _reviewed_model(model: str | Path, device: str) -> tuple[Any, Any, Path | None]:
    """The model given with --model (PyTorch, for its features and heatmaps), its Grad-CAM explainer
    (None for a network without feature maps) and its run folder (None for a model folder alone)."""
    from imgclf.artifact import resolve_artifact_path
    from imgclf.inference.explain import Explainer
    from imgclf.inference.predictor import Predictor

    artifact = resolve_artifact_path(model)
    run_dir = artifact.parent if (artifact.parent / runs.MANIFEST_FILE).is_file() else None
    predictor = Predictor.from_path(artifact, device=device, backend="torch")
    try:
        explainer = Explainer(predictor)
    except UsageError:
        explainer = None
    return predictor, explainer, run_dir


def _review_splits(image_set: ImageSet, run_dir: Path | None) -> np.ndarray:
    """The split of each image: the run's (its manifest), the layout's, or the one `train` makes with
    its defaults."""
    from imgclf.data.split import assign_splits

    if run_dir is not None:
        from imgclf.training.update import run_splits

        return run_splits(image_set, run_dir / runs.MANIFEST_FILE, 0)
    if image_set.splits is not None:
        return np.asarray(image_set.splits, dtype=object)
    return assign_splits(image_set, 0.2, 0.0, 0)


def _run_features(predictor: Any, image_set: ImageSet) -> tuple[np.ndarray | None, Any]:
    """The run's own features of every image (NaN rows: unreadable), kept for `update` (fp32, as it
    refits), and the label check's features when the run's backbone is the pretrained one as it came
    (None: the label check computes the offline backbone's)."""
    if predictor is None:
        return None, None
    from imgclf.features.store import stored_features
    from imgclf.models.anatomy import backbone_digest

    digest = backbone_digest(predictor.model)
    vectors, readable, _ = stored_features(digest, predictor.spec, image_set, predictor.features)
    features = np.where(readable[:, None], vectors, np.nan).astype(np.float32)
    label_features = (
        (vectors, readable) if digest == _pretrained_digest(predictor.info.architecture) else None
    )
    return features, label_features


def _pretrained_digest(architecture: dict[str, Any]) -> str | None:
    """The backbone digest of the offline pretrained weights of this architecture (None when imgclf
    has none for it): a run whose network still has it gives the label check its features."""
    from imgclf.models.anatomy import backbone_digest
    from imgclf.models.factory import create_model
    from imgclf.models.pretrained import OFFLINE_BACKBONES, load_pretrained

    name = architecture.get("name")
    if name not in OFFLINE_BACKBONES:
        return None
    model = create_model(architecture)
    load_pretrained(model, name)
    return backbone_digest(model)


def _table_columns(image_set: ImageSet) -> tuple[str, str]:
    """The path and label columns of a table source, from its description."""
    import re

    found = re.search(r"path column '([^']+)', label column '([^']+)'", image_set.description)
    if found is None:
        raise UsageError("cannot tell the table's path and label columns; give --path-col and --label-col")
    return found.group(1), found.group(2)
