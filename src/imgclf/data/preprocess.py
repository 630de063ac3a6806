"""The preprocessing spec: defined once at training, stored in the artifact, used by everything after.

Two steps, the same everywhere: `prepare_image` (any decoded image → uint8 H×W×C at the model's size
and channels) and `normalize_batch` (uint8 N×C×H×W tensor → float input of the model).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgclf.data.decode import (
    decode_image,
    pillow_warnings_logged,
    read_bytes,
    reduce_for,
    to_channels,
)
from imgclf.data.plain_png import decode_plain_png
from imgclf.errors import ModelError

INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
NORMALIZATIONS: dict[str, tuple[float, float]] = {
    "rescale": (0.0, 1.0),  # x / 255, as the tutorials' rescale=1/255
    "half": (0.5, 0.5),  # → [-1, 1]
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PreprocessSpec:
    """How an image becomes the model's input.

    Attributes:
        height, width: model input size in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        resize: "stretch" (ignore aspect ratio, as Keras does), "crop" (scale the short side, centre
            crop) or "pad" (scale the long side, pad with black).
        interpolation: Pillow resampling filter name.
        mean, std: per channel, applied after scaling pixel values to [0, 1].
    """

    height: int
    width: int
    channels: int
    resize: str = "stretch"
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessSpec:
        try:
            return cls(**values)
        except TypeError as error:
            raise ModelError(f"invalid preprocessing spec in the model: {error}") from error


def resolve_normalization(name: str, channels: int, model_mean_std: tuple | None = None) -> tuple[list, list]:
    """Mean and std per channel for a normalization name ("auto" uses the model's own if it has one)."""
    if name == "auto":
        if model_mean_std is not None:
            mean, std = model_mean_std
            return _fit_channels(list(mean), channels), _fit_channels(list(std), channels)
        name = "rescale"
    if name == "imagenet":
        return _fit_channels(list(IMAGENET_MEAN), channels), _fit_channels(list(IMAGENET_STD), channels)
    mean, std = NORMALIZATIONS[name]
    return [mean] * channels, [std] * channels


def _fit_channels(values: list[float], channels: int) -> list[float]:
    if len(values) == channels:
        return [float(v) for v in values]
    return [float(np.mean(values))] * channels


def resize_image(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize by the spec's policy to exactly (spec.width, spec.height)."""
    target = (spec.width, spec.height)
    if image.size == target:
        return image
    resample = INTERPOLATION[spec.interpolation]
    width, height = image.size
    if spec.resize == "stretch":
        return image.resize(target, resample, reducing_gap=3.0)
    if spec.resize == "crop":
        scale = max(spec.width / width, spec.height / height)
        scaled = (max(spec.width, round(width * scale)), max(spec.height, round(height * scale)))
        image = image.resize(scaled, resample, reducing_gap=3.0)
        left = (scaled[0] - spec.width) // 2
        top = (scaled[1] - spec.height) // 2
        return image.crop((left, top, left + spec.width, top + spec.height))
    # pad: fit inside, centre on black
    scale = min(spec.width / width, spec.height / height)
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(scaled, resample, reducing_gap=3.0)
    canvas = Image.new(image.mode, target)
    canvas.paste(image, ((spec.width - scaled[0]) // 2, (spec.height - scaled[1]) // 2))
    return canvas


def prepare_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Decoded image (any mode) → uint8 array H×W×C with the spec's size and channels."""
    image = resize_image(to_channels(image, spec.channels), spec)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def load_prepared(source: Any, spec: PreprocessSpec, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Decode a file (or bytes) and prepare it; JPEGs are downscaled while decoding when large.
    `formats`: the Pillow formats opened (see `decode_image`).

    A plain PNG (`decode_plain_png`, such as every MNIST file) takes a shorter way through Pillow to
    the same pixels.
    """
    if isinstance(source, (bytes, bytearray)):
        data: bytes | bytearray | None = source
    else:
        try:
            data = read_bytes(source)
        except OSError:
            data = None  # decode_image reports it
    image = decode_plain_png(data) if data is not None else None
    if image is not None:
        return prepare_image(reduce_for(image, (spec.width, spec.height)), spec)
    name = source if isinstance(source, (str, os.PathLike)) else None
    with pillow_warnings_logged(name):
        image = decode_image(
            data if data is not None else source, (spec.width, spec.height), name=name, formats=formats
        )
        return prepare_image(image, spec)


def normalize_batch(batch: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (or 0–255 float) N×C×H×W → float32 model input: x / 255, then (x − mean) / std."""
    batch = batch.float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)
