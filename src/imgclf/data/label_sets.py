"""Tables whose images carry several labels each, found from the data.

Two forms are read as multi-label: a label column that joins several labels with one separator
(`"cat dog"`, `"cat|dog"`, `"cat;dog"`, or `"cat,dog"` in quotes, as Kaggle's multi-label sets have
them), and several 0/1 columns, one per label, as CheXpert-style tables have them. `find_label_sets`
tells them from single-label tables whose class names hold a space ("Bell Pepper"): a separator
counts only when the labels it yields also stand alone, or are far fewer than the distinct values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.errors import DataError

NO_LABEL = "(none)"  # the label set of an image with none of the labels
SEPARATORS = ("|", ";", ",", " ")  # tried in this order: the rarer in class names first
INDICATOR_VALUES = frozenset({"0", "1", "0.0", "1.0", "", "-1", "-1.0"})  # -1: uncertain, read as 0


@dataclass(frozen=True)
class LabelSets:
    """How a table gives several labels per image, and what they are."""

    form: str  # "joined" (one column, a separator), "indicator" (one 0/1 column per label), "list"
    columns: tuple[str, ...]
    separator: str | None
    labels: tuple[str, ...]
    targets: np.ndarray  # (rows, labels) uint8, one row per table row
    uncertain: int = 0  # 0/1 columns: the cells marked -1 (uncertain, as CheXpert has them), read as 0

    def with_targets(self, targets: np.ndarray) -> LabelSets:
        """The same form and labels for these rows (the readable ones)."""
        return LabelSets(self.form, self.columns, self.separator, self.labels, targets, self.uncertain)

    def describe_columns(self) -> str:
        if self.form == "list":
            return f"label column {self.columns[0]!r} holding a list of labels per image"
        if self.form == "joined":
            shown = {" ": "spaces", "|": "'|'", ";": "';'", ",": "','"}[self.separator or " "]
            return f"label column {self.columns[0]!r} joining labels with {shown}"
        return f"{len(self.columns)} 0/1 label columns"

    def summary(self) -> str:
        """One line: the form, the labels, the images per label, the labels per image."""
        per_image = self.targets.sum(axis=1)
        per_label = self.targets.sum(axis=0)
        how = self.describe_columns()
        counts = ", ".join(f"{name} {int(count):,}" for name, count in zip(self.labels, per_label))
        if len(counts) > 160:
            counts = counts[:157].rsplit(",", 1)[0] + " …"
        return (
            f"multi-label ({how}): {len(self.labels)} labels ({counts}); labels per image: mean "
            f"{per_image.mean():.2f}, max {int(per_image.max(initial=0))}; "
            f"{int((per_image == 0).sum()):,} images with none"
            + (f"; {self.uncertain:,} values -1 (uncertain) read as absent" if self.uncertain else "")
        )


def joined_labels(values: Sequence[str], separator: str) -> list[list[str]]:
    return [[part.strip() for part in value.split(separator) if part.strip()] for value in values]


def _joined_form(values: list[str], forced: bool) -> str | None:
    """The separator that makes `values` label sets, or None."""
    filled = [v.strip() for v in values if v.strip()]
    distinct = set(filled)
    if len(distinct) < 2:
        return None
    for separator in SEPARATORS:
        joined = [v for v in distinct if separator in v]
        if not joined or (len(joined) * 10 < len(distinct) and not forced):
            continue
        alone = {v for v in distinct if separator not in v}
        parts = joined_labels(joined, separator)
        tokens = {part for labels in parts for part in labels}
        standing = sum(all(t in alone for t in labels) for labels in parts)
        if forced or standing * 2 >= len(joined) or len(tokens | alone) * 2 <= len(distinct):
            return separator
    return None


def find_label_sets(
    frame: Any,
    path_column: str,
    label_column: str | None,
    multi_label: bool | None = None,
) -> LabelSets | None:
    """The table's label sets when it is multi-label (or `multi_label` is True), else None.

    `label_column` is the label column found or given (None when the table has none by name:
    then only 0/1 columns can make it multi-label). `multi_label` False never finds any.
    """
    if multi_label is False:
        return None
    columns = [str(c) for c in frame.columns]
    if label_column is not None:
        values = frame[label_column].astype(str).tolist()
        separator = _joined_form(values, forced=bool(multi_label))
        if separator is not None:
            sets = joined_labels(values, separator)
            labels = sorted({label for labels in sets for label in labels})
            index = {label: i for i, label in enumerate(labels)}
            targets = np.zeros((len(sets), len(labels)), np.uint8)
            for row, labels_of_row in enumerate(sets):
                targets[row, [index[label] for label in labels_of_row]] = 1
            return LabelSets("joined", (label_column,), separator, tuple(labels), targets)
        if not multi_label:
            return None
    candidates = [c for c in columns if c != path_column and c.lower() != "split"]
    indicators = [c for c in candidates if set(frame[c].astype(str).str.strip().unique()) <= INDICATOR_VALUES]
    if len(indicators) >= 2 and (label_column is None or multi_label):
        cells = frame[indicators].astype(str).apply(lambda col: col.str.strip())
        targets = cells.isin(["1", "1.0"]).to_numpy().astype(np.uint8)
        uncertain = int(cells.isin(["-1", "-1.0"]).to_numpy().sum())
        return LabelSets("indicator", tuple(indicators), None, tuple(indicators), targets, uncertain)
    return None


def label_set_name(row: np.ndarray, labels: Sequence[str]) -> str:
    """A sample's label set as one name: "fog|rain", or "(none)"."""
    present = [label for label, on in zip(labels, row) if on]
    return "|".join(present) if present else NO_LABEL


def label_set_index(targets: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Each sample's label set as an integer, and the sets' names in sorted order: what an
    `ImageSet` of a multi-label set keeps in `labels` and `classes` (stratification, manifests)."""
    names = [label_set_name(row, labels) for row in targets]
    ordered = sorted(set(names))
    index = {name: i for i, name in enumerate(ordered)}
    return np.asarray([index[name] for name in names], dtype=np.int64), ordered


def relabel_for_model(image_set: Any, model_labels: Sequence[str]) -> Any:
    """An image set with the labels of a multi-label model, in its order: a multi-label set's label
    columns mapped onto the model's (labels the data lacks are absent from every image), or a
    single-label set's class taken as each image's one label. A label the model does not know is
    a DataError."""
    model_labels = list(model_labels)
    names = image_set.label_names if image_set.multi_label else image_set.classes
    unknown = sorted(set(names) - set(model_labels))
    if unknown:
        raise DataError(f"the data has label {unknown[0]!r}, which the model does not know")
    columns = [model_labels.index(name) for name in names]
    targets = np.zeros((len(image_set), len(model_labels)), np.uint8)
    if image_set.multi_label:
        targets[:, columns] = image_set.targets
    else:
        targets[np.arange(len(image_set)), np.asarray(columns, dtype=np.int64)[image_set.labels]] = 1
    image_set.targets = targets
    image_set.label_names = model_labels
    image_set.labels, image_set.classes = label_set_index(targets, model_labels)
    return image_set
