"""Training augmentation on whole batches, with the meaning of Keras `ImageDataGenerator`'s arguments.

Parameters are drawn per sample from a seeded generator (`sample_augment_params`) and applied in one
`affine_grid` + `grid_sample` call (`apply_augment`). The same code runs on CPU tensors and on the
GPU, so both draw from the same distribution of transforms.

Meaning of each setting, as in Keras:
    rotation      degrees; angle ~ U(-rotation, rotation)
    width_shift   fraction of the width;  shift ~ U(-w, w) · width
    height_shift  fraction of the height; shift ~ U(-h, h) · height
    shear         degrees (Keras' shear_range is an angle in degrees); angle ~ U(-shear, shear)
    zoom          zoom_x, zoom_y ~ U(1 - zoom, 1 + zoom), independently; > 1 shows more (zoom out)
    hflip/vflip   each with probability 0.5
    brightness    pixel values × U(1 - b, 1 + b)
    contrast      (x − image mean) × U(1 - c, 1 + c) + image mean (no Keras equivalent)
    crop_scale    random-resized crop (torchvision's RandomResizedCrop, no Keras equivalent): a crop
                  of area share ~ U(s, 1) and aspect ratio ~ log-U(3/4, 4/3) of the image, at a random
                  place inside it, stretched to the full size; 1 = off. Applied after the Keras
                  transforms, so a crop never shows points outside the image on its own.
    fill          how points outside the image are filled: nearest (edge), constant (0), reflect, wrap
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.config import AugmentConfig

PADDING_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection", "wrap": "zeros"}


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch (all tensors of length N, on the CPU)."""

    angle: torch.Tensor  # radians
    shear: torch.Tensor  # radians
    zoom_x: torch.Tensor
    zoom_y: torch.Tensor
    shift_x: torch.Tensor  # pixels
    shift_y: torch.Tensor  # pixels
    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    brightness: torch.Tensor  # factor
    contrast: torch.Tensor  # factor
    crop_w: torch.Tensor  # share of the width the crop keeps
    crop_h: torch.Tensor  # share of the height
    crop_x: torch.Tensor  # crop centre, pixels from the image centre
    crop_y: torch.Tensor


def is_identity(cfg: AugmentConfig) -> bool:
    """True when the settings change nothing (augmentation can be skipped)."""
    return not any(
        [
            cfg.rotation,
            cfg.width_shift,
            cfg.height_shift,
            cfg.shear,
            cfg.zoom,
            cfg.hflip,
            cfg.vflip,
            cfg.brightness,
            cfg.contrast,
            crops(cfg),
        ]
    )


def crops(cfg: AugmentConfig) -> bool:
    """True when random-resized crops are on (`crop_scale` < 1)."""
    return cfg.crop_scale is not None and cfg.crop_scale < 1.0


def _is_geometric(cfg: AugmentConfig) -> bool:
    return bool(cfg.rotation or cfg.width_shift or cfg.height_shift or cfg.shear or cfg.zoom or crops(cfg))


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def sample_augment_params(
    cfg: AugmentConfig, n: int, height: int, width: int, generator: torch.Generator
) -> AugmentParams:
    """Draw the random parameters of n samples (always on the CPU, so every device draws alike)."""

    def symmetric(amount: float) -> torch.Tensor:
        return _uniform(n, -amount, amount, generator)

    zoom = float(cfg.zoom or 0.0)
    drawn = dict(
        angle=symmetric(math.radians(cfg.rotation or 0.0)),
        shear=symmetric(math.radians(cfg.shear or 0.0)),
        zoom_x=_uniform(n, 1.0 - zoom, 1.0 + zoom, generator),
        zoom_y=_uniform(n, 1.0 - zoom, 1.0 + zoom, generator),
        shift_x=symmetric(cfg.width_shift or 0.0) * width,
        shift_y=symmetric(cfg.height_shift or 0.0) * height,
        hflip=(torch.rand(n, generator=generator) < 0.5) & bool(cfg.hflip),
        vflip=(torch.rand(n, generator=generator) < 0.5) & bool(cfg.vflip),
        brightness=_uniform(n, 1.0 - (cfg.brightness or 0.0), 1.0 + (cfg.brightness or 0.0), generator),
        contrast=_uniform(n, 1.0 - (cfg.contrast or 0.0), 1.0 + (cfg.contrast or 0.0), generator),
    )
    whole, centre = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    if not crops(cfg):  # drawn last and only when on: other settings draw as they always did
        return AugmentParams(**drawn, crop_w=whole, crop_h=whole, crop_x=centre, crop_y=centre)
    # random-resized crop, as torchvision draws it (area share, then log aspect ratio), clipped to fit
    area = _uniform(n, float(cfg.crop_scale), 1.0, generator)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), generator))
    crop_w = torch.sqrt(area * ratio).clamp(max=1.0)
    crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
    # centres keep the outermost samples on or inside the outermost pixel centres: no fill ever shows
    crop_x = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * (1.0 - crop_w) * (width - 1)
    crop_y = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * (1.0 - crop_h) * (height - 1)
    return AugmentParams(**drawn, crop_w=crop_w, crop_h=crop_h, crop_x=crop_x, crop_y=crop_y)


def affine_matrices(params: AugmentParams, height: int, width: int) -> torch.Tensor:
    """N×2×3 matrices mapping output to input coordinates in `affine_grid`'s normalized space.

    Built as Keras does in pixel space around the image centre — rotation · (shear · zoom · p + shift)
    — then taken into the crop (crop size · q + crop centre), and conjugated by the pixel→normalized
    scaling so non-square images rotate correctly.
    """
    cos, sin = torch.cos(params.angle), torch.sin(params.angle)
    n = len(cos)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.zeros(n, 2, 2, dtype=torch.float64)
    shear[:, 0, 0] = torch.cos(params.shear)
    shear[:, 1, 0] = -torch.sin(params.shear)
    shear[:, 1, 1] = 1.0
    zoom = torch.diag_embed(torch.stack([params.zoom_x, params.zoom_y], -1))
    crop = torch.diag_embed(torch.stack([params.crop_w, params.crop_h], -1))
    linear = crop @ rotation @ shear @ zoom
    shift = crop @ rotation @ torch.stack([params.shift_x, params.shift_y], -1).unsqueeze(-1)
    shift = shift + torch.stack([params.crop_x, params.crop_y], -1).unsqueeze(-1)
    scale = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    linear_normalized = linear * scale.view(1, 1, 2) / scale.view(1, 2, 1)
    shift_normalized = shift / scale.view(1, 2, 1)
    return torch.cat([linear_normalized, shift_normalized], dim=2)


def apply_augment(
    batch: torch.Tensor, params: AugmentParams, cfg: AugmentConfig, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Apply drawn parameters to a float batch N×C×H×W of pixel values in [0, 255].

    `size` (height, width) is the output size when it differs from the batch's: the training split
    cached larger for random-resized crops (`imgclf.data.prepared.crop_cache_spec`) is sampled
    straight down to the model's size by the same warp. The parameters are drawn for the batch's own size; in
    `affine_grid`'s normalized coordinates they mean the same transform at any resolution.
    """
    n, channels, height, width = batch.shape
    out_height, out_width = size or (height, width)
    device = batch.device
    if _is_geometric(cfg):
        theta = affine_matrices(params, height, width).to(device=device, dtype=torch.float32)
        grid = F.affine_grid(theta, [n, channels, out_height, out_width], align_corners=False)
        if cfg.fill == "wrap":
            grid = torch.remainder(grid + 1.0, 2.0) - 1.0
        batch = F.grid_sample(
            batch.float(), grid, mode="bilinear", padding_mode=PADDING_MODES[cfg.fill], align_corners=False
        )
    elif (out_height, out_width) != (height, width):
        batch = F.interpolate(
            batch.float(), size=(out_height, out_width), mode="bilinear", antialias=True, align_corners=False
        )
    if cfg.hflip:
        mask = params.hflip.to(device).view(-1, 1, 1, 1)
        batch = torch.where(mask, batch.flip(-1), batch)
    if cfg.vflip:
        mask = params.vflip.to(device).view(-1, 1, 1, 1)
        batch = torch.where(mask, batch.flip(-2), batch)
    if cfg.contrast:
        factor = params.contrast.to(device=device, dtype=batch.dtype).view(-1, 1, 1, 1)
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = (batch - mean) * factor + mean
    if cfg.brightness:
        batch = batch * params.brightness.to(device=device, dtype=batch.dtype).view(-1, 1, 1, 1)
    if cfg.brightness or cfg.contrast:
        batch = batch.clamp(0.0, 255.0)
    return batch


class BatchAugment:
    """Callable augmentation with its own seeded generator: `augment(batch_uint8_or_float)`."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0, size: tuple[int, int] | None = None) -> None:
        self.cfg = cfg
        self.size = size  # output (height, width); None: the batch's own size
        self.generator = torch.Generator().manual_seed(seed)
        self.active = not is_identity(cfg)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.float()
        size = self.size if self.size is not None and self.size != tuple(batch.shape[2:]) else None
        if not self.active and size is None:
            return batch
        params = sample_augment_params(
            self.cfg, batch.shape[0], batch.shape[2], batch.shape[3], self.generator
        )
        return apply_augment(batch, params, self.cfg, size)


class BatchMix:
    """MixUp and CutMix on whole batches (timm's "batch" mode): regularization for small data sets.

    Each batch is mixed with itself reversed (sample i with sample N-1-i; batches are shuffled):
    MixUp blends whole images, image·λ + other·(1-λ); CutMix pastes a box of the other image that
    covers a share 1-λ of the area. λ ~ Beta(α, α) per batch, from a seeded generator. With both on,
    each batch gets one of them with probability 1/2, as timm does. The loss is then
    λ·loss(label) + (1-λ)·loss(other label), for CutMix with λ the share the box left.
    """

    def __init__(self, mixup: float, cutmix: float, seed: int = 0) -> None:
        self.mixup = float(mixup or 0.0)
        self.cutmix = float(cutmix or 0.0)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mixed images, the other labels, λ) for a float batch N×C×H×W (any normalization)."""
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(self.rng.beta(alpha, alpha))
        other = images.flip(0)
        if not use_cutmix:
            return images * lam + other * (1.0 - lam), labels.flip(0), lam
        height, width = images.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the share the box really left
        return images, labels.flip(0), lam
