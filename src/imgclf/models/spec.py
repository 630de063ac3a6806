"""A model's input: size, channels, resize and normalization, from the flags, the data and the model."""

from __future__ import annotations

import numpy as np

from imgclf.config import DataConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.preprocess import PreprocessSpec, resolve_normalization
from imgclf.models.factory import model_interpolation, model_mean_std
from imgclf.models.pretrained import pretrained_resolution


def resolve_spec(
    cfg: DataConfig, model_name: str, image_set: ImageSet, pretrained: bool = False
) -> PreprocessSpec:
    """Size, channels and normalization from the flags, else from the data and the model.

    A pretrained backbone takes RGB (grayscale images are replicated to 3 channels) at its own
    resolution, normalized as it was trained.
    """
    headers = image_set.headers or []
    channels = cfg.channels
    if channels is None:
        channels = 3 if pretrained or not (headers and all(h.grayscale for h in headers)) else 1
    resolution = pretrained_resolution(model_name) if pretrained else None
    if cfg.image_size is not None:
        height, width = cfg.image_size
    elif resolution is not None:
        height = width = resolution
    else:
        sizes = {(h.height, h.width) for h in headers}
        if len(sizes) == 1 and max(next(iter(sizes))) <= 256:
            height, width = next(iter(sizes))
        else:
            short_sides = [min(h.height, h.width) for h in headers] or [224]
            side = int(np.clip(np.median(short_sides), 32, 224))
            height = width = side
    mean, std = resolve_normalization(cfg.normalize, channels, model_mean_std(model_name))
    interpolation = cfg.interpolation
    if interpolation == "auto":  # a pretrained backbone's own filter (as timm resolves it), else bilinear
        interpolation = (model_interpolation(model_name) if pretrained else None) or "bilinear"
    return PreprocessSpec(int(height), int(width), int(channels), cfg.resize, interpolation, mean, std)
