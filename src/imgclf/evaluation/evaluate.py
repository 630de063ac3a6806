"""A model evaluated on a prepared split: every image predicted through `Predictor` (the same
preprocessing, test-time augmentation and backend as `predict` and `serve`), then every output of
the evaluation folder written from those probabilities."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgclf.data.loader import StreamLoader
from imgclf.data.prepared import PreparedData, image_loader
from imgclf.evaluation.outputs import Evaluation, write_evaluation
from imgclf.evaluation.plots import class_grid_figure, save_figure
from imgclf.inference.predictor import Predictor

# what `predict_split` returns: (probabilities N×K, labels, sample indices, likeness N×2 or None)
Predicted = tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]


def predict_split(
    predictor: Predictor, prepared: PreparedData, split: str, batch_size: int = 128
) -> Predicted:
    """(probabilities N×K, labels, sample indices, likeness to the training images or None) of
    one split, in its order; files that turn out unreadable while streaming are left out."""
    indices = prepared.indices(split)
    loader = prepared.loader(split, batch_size, shuffle=False)
    probabilities, labels, likeness = [], [], []
    for batch in loader.epoch(0):
        batch_probabilities, batch_likeness = predictor.score_batch(batch.images)
        probabilities.append(batch_probabilities)
        likeness.append(batch_likeness)
        labels.append(batch.labels.numpy())
    if isinstance(loader, StreamLoader) and loader.bad:  # unreadable files met now are left out
        keep = np.asarray([i for i in range(len(indices)) if i not in loader.bad], dtype=np.int64)
        indices = indices[keep]
    if not probabilities:
        return np.zeros((0, len(predictor.classes)), np.float32), np.zeros(0, np.int64), indices, None
    likeness = None if likeness[0] is None else np.concatenate(likeness)
    return np.concatenate(probabilities), np.concatenate(labels), indices, likeness


def split_metrics(
    predictor: Predictor,
    prepared: PreparedData,
    split: str,
    batch_size: int = 128,
    prefix: str = "test",
    predicted: Predicted | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, accuracy and count of one split (`{prefix}_loss`, …); empty without images.
    `predicted`: the split's predictions when they are at hand already."""
    probabilities, labels, _, _ = predicted or predict_split(predictor, prepared, split, batch_size)
    if not len(labels):
        return {}
    chosen = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return {
        f"{prefix}_loss": float(-np.log(np.clip(chosen, 1e-12, None)).mean()),
        f"{prefix}_acc": float((probabilities.argmax(1) == labels).mean()),
        f"{prefix}_count": float(len(labels)),
    }


def evaluate_split(
    predictor: Predictor,
    prepared: PreparedData,
    split: str,
    out_dir: Path,
    batch_size: int = 128,
    top_k: int = 5,
    name: str | None = None,
    predicted: Predicted | None = None,
) -> Evaluation:
    """Predict one split and write the whole evaluation (metrics.json, plots, predictions.csv).

    `name` is the split's name in the outputs when it differs from the selector (e.g. "all");
    `predicted`: the split's predictions when they are at hand already.
    """
    probabilities, labels, indices, likeness = predicted or predict_split(
        predictor, prepared, split, batch_size
    )
    sources = [prepared.image_set.keys[i] for i in indices]
    return write_evaluation(
        out_dir,
        probabilities,
        labels,
        prepared.image_set.classes,
        sources,
        image_loader(prepared, indices),
        split=name or split,
        top_k=top_k,
        extra={"tta": predictor.tta},
        explain=gallery_explainer(predictor),
        likeness=likeness,
        rule=predictor.unknown_rule,
    )


def gallery_explainer(predictor: Predictor) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """Grad-CAM for the mistakes' gallery when the PyTorch model is at hand (not for an export, nor
    for a model without spatial feature maps)."""
    from imgclf.errors import UsageError
    from imgclf.inference.explain import Explainer

    if predictor.model is None:
        return None
    try:
        explainer = Explainer(predictor)
    except UsageError:
        return None
    return lambda image, class_index: explainer.explain_arrays(image[None], class_index)[0][0]


def write_samples(path: Path, prepared: PreparedData, per_class: int = 8) -> None:
    """samples.png: the first `per_class` images of every class (of a multi-label set: that carry
    each label), as the model sees them."""
    image_set = prepared.image_set
    load = image_loader(prepared, np.arange(len(image_set)))
    by_class: dict[str, list[np.ndarray]] = {}
    for label, name in enumerate(image_set.output_names):
        if image_set.targets is not None:
            chosen = np.flatnonzero(image_set.targets[:, label])[:per_class]
        else:
            chosen = np.flatnonzero(image_set.labels == label)[:per_class]
        by_class[name] = [image for image in (load(int(i)) for i in chosen) if image is not None]
    save_figure(class_grid_figure(by_class, per_class), path)
