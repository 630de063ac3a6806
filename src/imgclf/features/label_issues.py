"""Likely wrong labels, by confident learning (Northcutt, Jiang and Chuang, 2021), on features.

1. Every image's features come from the offline pretrained backbone (or a given model's
   penultimate layer), computed once.
2. Out-of-sample class probabilities: the mean of two estimates that never saw the image's label,
   k-fold cross-fitting of a logistic-regression head (`fit_head`'s L-BFGS; its L2 strength chosen
   once by cross-validation) and the labels of its nearest neighbours in feature space (the image
   itself left out). With 5% of the labels flipped on 5,000 MNIST digits (five seeds), the mean
   lists issues at precision 0.813 and recall 0.917, the head alone at 0.784 and 0.903.
3. Confident learning (see `confident_learning`): the confident joint estimates how many images of
   each class are wrongly labelled; that many per class, the ones the head finds least like their
   label, are the issues, ranked by the probability of their given label (self-confidence), lowest
   first; the suggested label is the most probable other class.

A multi-label set (see `multi_label_confident_learning`) is checked label by label, as that many
binary problems: its out-of-sample probabilities are one sigmoid per label, cross-fitted on folds
that keep every label in every fold (`iterative_split`); an issue is an image with a likely
missing label (absent from its set, yet confidently present) or a likely extra one (in its set, yet
confidently absent).

Written here rather than taken from cleanlab, which is AGPL-3.0; the method is short.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.config import DataConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.prepared import PreparedData, ProgressListener, image_loader, prepare_data
from imgclf.device import resolve_device, resolve_precision
from imgclf.features.bottleneck import FeatureContext, compute_features, feature_network
from imgclf.features.head import bce_loss, fit_head, fit_logistic, standardized
from imgclf.io import write_text_atomic

DEFAULT_BACKBONE = "efficientnet_lite0"
# the label check's heads see unit-variance features (`standardized`'s floor 0): the floor that makes
# the classification head better on new images found flipped labels no better (5% flipped on Lite0
# features, 3 draws: flowers5 at 100 per class recall 0.853 → 0.867, precision 0.172 → 0.164;
# scikit-learn's digits 0.892 → 0.867, 0.649 → 0.699), and one fewer of 8 on a small CNN's features
LABEL_CHECK_FLOOR = 0.0
LABEL_ISSUES_FILE = "label_issues.csv"
LABEL_ISSUES_GALLERY = "label_issues.png"


@dataclass
class LabelIssue:
    index: int  # sample of LabelIssues.image_set
    path: str
    given: str
    suggested: str
    quality: float  # out-of-sample probability of the given label: lower is more likely wrong
    # multi-label sets: the labels likely missing from the image's set and those likely extra in it
    # (`given` and `suggested` are then label sets joined by "|"; `quality` is the lowest
    # out-of-sample probability of a given value: p of an extra label, 1 - p of a missing one)
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()


@dataclass
class LabelIssues:
    image_set: ImageSet  # the readable samples, in the order of `probabilities`
    probabilities: np.ndarray  # out-of-sample, N×K (multi-label sets: N×labels, one sigmoid each)
    issues: list[LabelIssue]  # most likely wrong first
    prepared: PreparedData | None  # the decoded images, for the gallery
    features: np.ndarray | None = None  # N×D, the features the probabilities come from

    @property
    def agreement(self) -> tuple[str, float]:
        """How well the out-of-sample probabilities agree with the given labels: (the measure's
        name, its value). The weaker it is, the more of the listed images are right after all."""
        if self.image_set.multi_label:
            from imgclf.evaluation.multi_label import mean_average_precision

            assert self.image_set.targets is not None
            return "mAP", mean_average_precision(self.probabilities, np.asarray(self.image_set.targets))
        labels = np.asarray(self.image_set.labels)
        return "accuracy", float((self.probabilities.argmax(1) == labels).mean()) if len(labels) else 0.0


def _cross_fitted(
    features: np.ndarray,
    targets: torch.Tensor,
    outputs: int,
    l2: float,
    held_out: Sequence[np.ndarray],
    multi_label: bool,
) -> np.ndarray:
    """Every sample's probabilities from a logistic-regression head fitted on the samples outside
    its held-out fold (`held_out`: index arrays): a softmax over `outputs` classes, or one sigmoid
    per label."""
    x, _, _, _ = standardized(features, None, LABEL_CHECK_FLOOR)
    zero = (
        torch.zeros(x.shape[1], outputs, dtype=torch.float64),
        torch.zeros(outputs, dtype=torch.float64),
    )
    probabilities = np.zeros((len(targets), outputs))
    for held in held_out:
        keep = np.ones(len(targets), dtype=bool)
        keep[held] = False
        if multi_label:
            weight, bias = fit_logistic(x[keep], targets[keep], l2, zero, loss_fn=bce_loss())
            probabilities[held] = torch.sigmoid(x[held] @ weight + bias).numpy()
        else:
            weight, bias = fit_logistic(x[keep], targets[keep], l2, zero, 0.0)
            probabilities[held] = torch.softmax(x[held] @ weight + bias, dim=1).numpy()
    return probabilities


def out_of_sample_probabilities(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Class probabilities of every sample from a head fitted on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=num_classes)
    folds = max(2, min(folds, int(counts[counts > 0].min())))
    l2 = fit_head(features, labels, None, None, num_classes, floor=LABEL_CHECK_FLOOR).l2  # by 3-fold CV
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    held_out = [held for _, held in splitter.split(features, labels)]
    y = torch.as_tensor(labels, dtype=torch.int64)
    return _cross_fitted(features, y, num_classes, l2, held_out, multi_label=False)


def neighbour_probabilities(
    features: np.ndarray, labels: np.ndarray, num_classes: int, neighbours: int = 10, chunk: int = 1024
) -> np.ndarray:
    """Class probabilities of every sample from the labels of its `neighbours` most similar other
    samples (cosine similarity of the features; the sample itself left out), lightly smoothed."""
    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    y = torch.as_tensor(labels, dtype=torch.int64)
    neighbours = max(1, min(neighbours, len(labels) - 1))
    votes = torch.zeros(len(labels), num_classes)
    for start in range(0, len(labels), chunk):
        similarity = x[start : start + chunk] @ x.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -float("inf")  # not its own neighbour
        nearest = similarity.topk(neighbours, dim=1).indices
        votes[start : start + chunk].scatter_add_(1, y[nearest], torch.ones(nearest.shape))
    return ((votes + 0.1) / (neighbours + 0.1 * num_classes)).numpy().astype(np.float64)


def out_of_sample_label_probabilities(
    features: np.ndarray, targets: np.ndarray, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Every sample's sigmoid probability of every label from a multi-label head fitted on the
    other folds; the folds keep every label in every fold (`iterative_split`), the L2 strength is
    chosen once by `fit_multi_label_head`'s cross-validation."""
    from imgclf.data.split import iterative_split
    from imgclf.features.head import fit_multi_label_head

    counts = np.asarray(targets).sum(0)
    folds = int(max(2, min(folds, counts[counts > 0].min() if (counts > 0).any() else 2)))
    fold_of = iterative_split(targets, {f"fold{k}": 1.0 / folds for k in range(1, folds)}, seed)
    l2 = fit_multi_label_head(features, targets, None, None, floor=LABEL_CHECK_FLOOR).l2
    held_out = [np.flatnonzero(fold_of == name) for name in np.unique(fold_of)]
    t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    return _cross_fitted(features, t, t.shape[1], l2, held_out, multi_label=True)


def confident_learning(probabilities: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, float]]:
    """(sample, suggested class, quality of its given label) of every likely wrong label, lowest
    quality first: confident learning's prune-by-noise-rate (cleanlab's default filter).

    The confident joint counts the images labelled i that are confidently of class j (p_j at least
    class j's mean self-confidence t_j; the largest such j). Calibrated to the class sizes, its row i
    off the diagonal estimates how many images labelled i are wrong; in each class that many, those
    with the smallest margin between the given label and the best other class, are the issues.
    """
    count, num_classes = len(labels), probabilities.shape[1]
    thresholds = np.array(
        [probabilities[labels == k, k].mean() if (labels == k).any() else 1.0 for k in range(num_classes)]
    )
    above = probabilities >= thresholds[None, :]
    confident = np.where(above, probabilities, -1.0).argmax(1)
    joint = np.zeros((num_classes, num_classes))
    for index in np.flatnonzero(above.any(1)):
        joint[labels[index], confident[index]] += 1
    sizes = np.bincount(labels, minlength=num_classes)
    calibrated = joint * (sizes / np.maximum(joint.sum(1), 1))[:, None]
    quality = probabilities[np.arange(count), labels]
    others = probabilities.copy()
    others[np.arange(count), labels] = -1.0
    margin = quality - others.max(1)
    found = []
    for k in range(num_classes):
        wrong = int(np.rint(calibrated[k].sum() - calibrated[k, k]))
        members = np.flatnonzero(labels == k)
        found += members[np.argsort(margin[members], kind="stable")][:wrong].tolist()
    found.sort(key=lambda index: quality[index])
    return [(int(i), int(others[i].argmax()), float(quality[i])) for i in found]


def multi_label_confident_learning(
    probabilities: np.ndarray, targets: np.ndarray
) -> list[tuple[int, int, bool, float]]:
    """(sample, label, whether the label is in the sample's set, quality of that given value) of
    every likely wrong (sample, label) pair of a multi-label set, lowest quality first: confident
    learning's prune-by-noise-rate on each label as a binary problem, probabilities (1 - p, p).

    Per label, the thresholds are the mean p of the samples that carry it and the mean 1 - p of
    those that do not; the confident joint counts the carriers whose 1 - p reaches the second
    (confidently without the label) and the others whose p reaches the first (confidently with
    it). Calibrated to the two group sizes, it says how many of each group are wrong; that many,
    those whose p argues most against their given value, are the issues, each one only when p
    does argue against it (the given value's probability below 0.5)."""
    targets = np.asarray(targets) > 0.5
    found: list[tuple[int, int, bool, float]] = []
    for label in range(targets.shape[1]):
        p, given = probabilities[:, label], targets[:, label]
        if given.all() or not given.any():
            continue  # a label on every image, or on none: nothing to tell its carriers from
        binary = np.stack([1.0 - p, p], axis=1)  # the margin of `confident_learning` is then 2q - 1
        for index, _, quality in confident_learning(binary, given.astype(np.int64)):
            if quality < 0.5:  # listed only where p argues against the given value
                found.append((index, label, bool(given[index]), quality))
    found.sort(key=lambda item: item[3])
    return found


def _multi_label_issues(kept: ImageSet, probabilities: np.ndarray, always: Sequence[str]) -> list[LabelIssue]:
    """The likely wrong label sets, one issue per image (its missing and extra labels together),
    most likely wrong first."""
    from imgclf.evaluation.multi_label import join_labels

    assert kept.targets is not None and kept.label_names is not None
    names, targets = kept.label_names, np.asarray(kept.targets) > 0.5
    pairs: dict[int, list[tuple[int, bool, float]]] = {}
    for index, label, present, quality in multi_label_confident_learning(probabilities, targets):
        pairs.setdefault(index, []).append((label, present, quality))
    for index, key in enumerate(kept.keys):
        if key in always and index not in pairs:  # listed whatever its score: its least likely value
            quality = np.where(targets[index], probabilities[index], 1.0 - probabilities[index])
            label = int(quality.argmin())
            pairs[index] = [(label, bool(targets[index, label]), float(quality[label]))]
    issues = []
    for index, flagged in pairs.items():
        given = [names[j] for j in np.flatnonzero(targets[index])]
        extra = tuple(names[label] for label, present, _ in flagged if present)
        missing = tuple(names[label] for label, present, _ in flagged if not present)
        suggested = [n for n in names if (n in given and n not in extra) or n in missing]
        quality = min(q for _, _, q in flagged)
        issues.append(
            LabelIssue(
                index, kept.keys[index], join_labels(given), join_labels(suggested), quality, missing, extra
            )
        )
    issues.sort(key=lambda issue: issue.quality)
    return issues


def find_label_issues(
    image_set: ImageSet,
    model: str | Path | None = None,
    folds: int = 5,
    device: str = "auto",
    always: Sequence[str] = (),
    callbacks: Sequence[ProgressListener] = (),
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> LabelIssues:
    """The likely wrong labels of a labelled image set (headers read). `model`: a saved model
    folder, or a pretrained backbone's name (default efficientnet_lite0, offline). `always`: sample
    keys listed whatever their score (the same picture found under two classes). `features`: every
    sample's features and which samples are readable, when the caller has them (the review's, from
    the feature store); `prepared` is then None."""
    prepared = None
    if features is None:
        resolved = resolve_device(device)
        network, spec = feature_network(model or DEFAULT_BACKBONE, None, DataConfig(), image_set, resolved)
        splits = np.full(len(image_set), "all", dtype=object)
        prepared = prepare_data(image_set, splits, spec, "auto", None, callbacks)
        ctx = FeatureContext(device=resolved, spec=spec, autocast_dtype=resolve_precision("auto", resolved))
        vectors, labels = compute_features(network, prepared, "all", ctx, 64, callbacks)
        kept = prepared.image_set
    else:
        vectors, readable = features
        kept = image_set.subset(np.flatnonzero(readable))
        vectors, labels = vectors[readable], kept.labels
    if kept.multi_label:
        assert kept.targets is not None
        # the head alone: the share of neighbours carrying a label ranked the changed labels worse
        # (flowers5 mosaics, 5% of images with one label added or dropped: 35 of the first 150
        # pairs against 32 averaged with it; MNIST mosaics: 41 of 100 against 37)
        probabilities = out_of_sample_label_probabilities(vectors, kept.targets, folds)
        issues = _multi_label_issues(kept, probabilities, always)
        return LabelIssues(kept, probabilities, issues, prepared, vectors)
    probabilities = (
        out_of_sample_probabilities(vectors, labels, len(kept.classes), folds)
        + neighbour_probabilities(vectors, labels, len(kept.classes))
    ) / 2.0
    found = confident_learning(probabilities, labels)
    listed = {index for index, _, _ in found}
    for index, key in enumerate(kept.keys):
        if key in always and index not in listed:
            others = probabilities[index].copy()
            others[labels[index]] = -1.0
            found.append((index, int(others.argmax()), float(probabilities[index, labels[index]])))
    issues = [
        LabelIssue(index, kept.keys[index], kept.classes[labels[index]], kept.classes[suggested], quality)
        for index, suggested, quality in found
    ]
    return LabelIssues(kept, probabilities, issues, prepared, vectors)


def write_label_issues(result: LabelIssues, out_dir: Path, gallery_size: int = 24) -> Path:
    """label_issues.csv (path, given, suggested, score: the given label's out-of-sample probability;
    a multi-label set's also missing and extra, labels joined by "|") and label_issues.png (the
    most likely wrong first)."""
    from imgclf.evaluation.multi_label import LABEL_JOIN
    from imgclf.evaluation.plots import image_grid_figure, save_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    multi = result.image_set.multi_label
    writer.writerow(["path", "given", "suggested", *(["missing", "extra"] if multi else []), "score"])
    for issue in result.issues:
        changes = [LABEL_JOIN.join(issue.missing), LABEL_JOIN.join(issue.extra)] if multi else []
        writer.writerow([issue.path, issue.given, issue.suggested, *changes, f"{issue.quality:.6f}"])
    write_text_atomic(out_dir / LABEL_ISSUES_FILE, buffer.getvalue())
    shown = result.issues[:gallery_size]
    load = image_loader(result.prepared, np.asarray([issue.index for issue in shown], dtype=np.int64))
    images, captions = [], []
    for position, issue in enumerate(shown):
        image = load(position)
        if image is not None:
            images.append(image)
            if multi:
                changes = [f"+{name}" for name in issue.missing] + [f"-{name}" for name in issue.extra]
                given = issue.given or "(none)"
                captions.append(f"labelled {given}\n{' '.join(changes)} ({issue.quality:.2f})")
            else:
                captions.append(f"labelled {issue.given}\nlooks {issue.suggested} ({issue.quality:.2f})")
    if images:
        figure = image_grid_figure(images, captions, columns=6, title="Likely wrong labels")
        save_figure(figure, out_dir / LABEL_ISSUES_GALLERY)
    return out_dir / LABEL_ISSUES_FILE
