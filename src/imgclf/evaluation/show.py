"""`imgclf show`: a grid of sample images per class, the first look at a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from imgclf.data.decode import GRAYSCALE_MODES, ImageDecodeError, to_channels
from imgclf.data.imageset import ImageSet
from imgclf.data.sources import as_image_set
from imgclf.evaluation.plots import class_grid_figure, save_figure


def sample_images(image_set: ImageSet, per_class: int, seed: int = 0, max_side: int = 160) -> dict[str, list]:
    """Up to `per_class` decoded images per class (seeded choice; unreadable files are passed over)."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {}
    for label, name in enumerate(image_set.classes):
        members = np.flatnonzero(image_set.labels == label)
        rng.shuffle(members)
        images: list[np.ndarray] = []
        for index in members:
            if len(images) >= per_class:
                break
            try:
                image = image_set.reader.open(image_set.keys[int(index)])
            except (ImageDecodeError, OSError):
                continue
            image = to_channels(image, 1 if image.mode in GRAYSCALE_MODES else 3)
            image.thumbnail((max_side, max_side))
            array = np.asarray(image)
            images.append(array[:, :, None] if array.ndim == 2 else array)
        chosen[name] = images
    return chosen


def show(
    data: str | Path | ImageSet,
    per_class: int = 8,
    out: str | Path | None = None,
    seed: int = 0,
    path_col: str | None = None,
    label_col: str | None = None,
    images: str | None = None,
    multi_label: bool | None = None,
    splits: str = "auto",
) -> Figure:
    """Rows of sample images per class. Returns the matplotlib Figure (a notebook displays it);
    with `out`, also writes it as a PNG."""
    image_set = as_image_set(
        data, path_col=path_col, label_col=label_col, images=images, multi_label=multi_label, splits=splits
    )
    figure = class_grid_figure(sample_images(image_set, per_class, seed), per_class)
    if out is not None:
        save_figure(figure, out)
    return figure
