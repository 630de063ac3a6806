"""Batched augmentation: Keras meanings, seeded, per-sample parameters, the same code on any device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgclf.config import AugmentConfig, resolve_augment
from imgclf.data.augment import BatchAugment, BatchMix, apply_augment, sample_augment_params


def _cfg(**values) -> AugmentConfig:
    cfg = AugmentConfig(**values)
    resolve_augment(cfg)
    return cfg


def _square_batch(n: int = 4, size: int = 16) -> torch.Tensor:
    batch = torch.zeros(n, 1, size, size)
    batch[:, :, 4:8, 2:6] = 255.0  # a bright square up and to the left
    return batch


def test_no_augmentation_is_identity() -> None:
    batch = _square_batch()
    assert torch.equal(BatchAugment(_cfg())(batch), batch)


def test_flips_are_exact_and_per_sample() -> None:
    batch = _square_batch(64)
    out = BatchAugment(_cfg(hflip=True), seed=3)(batch)
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 15 < sum(flipped) < 49  # about half


def test_width_shift_moves_content_horizontally_only() -> None:
    cfg = _cfg(width_shift=0.25, fill="constant")
    batch = _square_batch(32)
    out = apply_augment(batch, sample_augment_params(cfg, 32, 16, 16, torch.Generator().manual_seed(0)), cfg)
    assert out[:, :, :4].abs().max() < 1e-3 and out[:, :, 8:].abs().max() < 1e-3  # rows untouched
    columns = (out[:, 0] > 127).float().mean(dim=1).argmax(dim=1)
    assert len(set(columns.tolist())) > 3  # each sample got its own shift


def test_rotation_by_90_degrees_matches_rot90() -> None:
    cfg = _cfg(rotation=90.0, fill="constant")
    batch = _square_batch(1)
    params = sample_augment_params(cfg, 1, 16, 16, torch.Generator().manual_seed(0))
    params.angle = torch.tensor([math.pi / 2], dtype=torch.float64)
    out = apply_augment(batch, params, cfg)
    expected_a = torch.rot90(batch, 1, dims=(2, 3))
    expected_b = torch.rot90(batch, -1, dims=(2, 3))
    error = min((out - expected_a).abs().max(), (out - expected_b).abs().max())
    assert error < 1e-3


@pytest.mark.parametrize("fill", ["nearest", "constant", "reflect", "wrap"])
def test_fill_modes(fill: str) -> None:
    cfg = _cfg(width_shift=0.5, fill=fill)
    batch = torch.arange(16.0).repeat(16, 1).view(1, 1, 16, 16) * 10  # columns 0..150
    params = sample_augment_params(cfg, 1, 16, 16, torch.Generator().manual_seed(0))
    params.shift_x = torch.tensor([8.0], dtype=torch.float64)  # content moves left by 8 px
    out = apply_augment(batch, params, cfg)[0, 0, 0]
    assert torch.allclose(out[:8], batch[0, 0, 0, 8:], atol=1e-3)
    tail = out[8:]
    expected = {
        "constant": torch.zeros(8),
        "nearest": torch.full((8,), 150.0),
        "reflect": batch[0, 0, 0, 8:].flip(0),
        "wrap": batch[0, 0, 0, :8],
    }[fill]
    assert torch.allclose(tail, expected, atol=1e-3), (fill, tail)


def test_parameters_follow_keras_ranges_and_seed() -> None:
    cfg = _cfg(rotation=40, width_shift=0.2, height_shift=0.1, shear=20, zoom=0.2, brightness=0.3)
    params = sample_augment_params(cfg, 5000, 30, 50, torch.Generator().manual_seed(1))
    assert params.angle.abs().max() <= math.radians(40) and params.angle.abs().max() > math.radians(39)
    assert params.shift_x.abs().max() <= 0.2 * 50 and params.shift_y.abs().max() <= 0.1 * 30
    assert params.shear.abs().max() <= math.radians(20)
    assert params.zoom_x.min() >= 0.8 and params.zoom_x.max() <= 1.2
    assert params.brightness.min() >= 0.7 and params.brightness.max() <= 1.3
    assert abs(params.angle.mean()) < 0.02  # symmetric
    again = sample_augment_params(cfg, 5000, 30, 50, torch.Generator().manual_seed(1))
    assert torch.equal(params.angle, again.angle)


def test_brightness_scales_and_clips() -> None:
    cfg = _cfg(brightness=0.5)
    batch = torch.full((200, 1, 4, 4), 200.0)
    out = BatchAugment(cfg, seed=0)(batch)
    assert out.max() == 255.0 and out.min() >= 100.0 - 1e-4
    assert (out.flatten(1).std(1) < 1e-4).all()  # one factor per image


def test_random_resized_crops_stay_inside_the_image_and_zoom_in() -> None:
    """A crop keeps 25-100% of the area (aspect 3/4-4/3) and is stretched: content grows, never leaves."""
    cfg = _cfg(crop_scale=0.25, fill="constant")  # constant fill would show any point outside as 0
    white = torch.full((256, 1, 32, 32), 255.0)
    assert torch.allclose(BatchAugment(cfg, seed=0)(white), white)  # no sample reaches outside
    params = sample_augment_params(cfg, 4000, 32, 32, torch.Generator().manual_seed(1))
    area = params.crop_w * params.crop_h
    ratio = params.crop_w / params.crop_h
    assert area.min() >= 0.25 * 0.99 and area.max() <= 1.0 + 1e-9
    assert 0.55 < area.mean() < 0.7  # U(0.25, 1), a little less where a side was clipped to 1
    assert (ratio > 0.74).all() and (ratio < 1.34).all() and ratio.log().mean().abs() < 0.03
    assert (params.crop_x.abs() <= (1 - params.crop_w) * 15.5 + 1e-9).all()
    dot = torch.zeros(200, 1, 32, 32)
    dot[:, :, 14:18, 14:18] = 255.0  # 16 bright pixels in the middle
    grown = (BatchAugment(cfg, seed=2)(dot) > 127).sum(dim=(1, 2, 3)).float()
    assert grown.mean() > 16 * 1.3  # stretched crops show the dot larger on average


def test_crops_off_leave_the_other_draws_unchanged() -> None:
    """Adding crops to imgclf did not change what a seed draws for the Keras settings."""
    keras = _cfg(rotation=20, width_shift=0.2, zoom=0.1, hflip=True)
    cropped = _cfg(rotation=20, width_shift=0.2, zoom=0.1, hflip=True, crop_scale=0.5)
    plain = sample_augment_params(keras, 8, 16, 16, torch.Generator().manual_seed(5))
    both = sample_augment_params(cropped, 8, 16, 16, torch.Generator().manual_seed(5))
    assert torch.equal(plain.angle, both.angle) and torch.equal(plain.shift_x, both.shift_x)
    assert torch.equal(plain.crop_w, torch.ones(8, dtype=torch.float64))
    assert not torch.equal(both.crop_w, plain.crop_w)


def test_presets_fill_unset_values_and_flags_win() -> None:
    cfg = AugmentConfig(preset="light", rotation=3.0)
    resolve_augment(cfg)
    assert cfg.rotation == 3.0 and cfg.hflip is True and cfg.width_shift == 0.1 and cfg.vflip is False


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_path_draws_the_same_transforms_as_the_cpu_path(device: str) -> None:
    """A dot shifted by width_shift=0.3 lands uniformly within ±0.3·W, and the batch on `device`
    (the GPU when there is one; CI checks the CPU tensors) gets exactly the CPU path's transforms."""
    size, count = 33, 4000
    batch = torch.zeros(count, 1, size, size)
    batch[:, :, 16, 16] = 255.0
    cfg = _cfg(width_shift=0.3, hflip=True)
    reference = BatchAugment(cfg, seed=7)(batch)
    moved = BatchAugment(cfg, seed=7)(batch.to(device)).cpu()
    assert moved.device.type == "cpu" and torch.allclose(moved, reference, atol=1e-3)
    columns = reference[:, 0].sum(1).argmax(1).float() - 16  # where the dot went
    rows = reference[:, 0].sum(2).argmax(1)
    assert torch.all(rows == 16)  # width shift moves along x only
    limit = 0.3 * size
    assert columns.abs().max() <= math.ceil(limit)
    assert abs(columns.mean().item()) < 0.4  # symmetric
    within_half = (columns.abs() <= limit / 2).float().mean().item()
    assert 0.45 < within_half < 0.56  # uniform: half of the shifts within half of the range


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_small_cached_data_lives_on_the_gpu() -> None:
    import numpy as np

    from imgclf.data.loader import MemoryLoader

    images = np.random.default_rng(0).integers(0, 255, (100, 8, 8, 1), dtype=np.uint8)
    loader = MemoryLoader(images, np.arange(100) % 3, 32, shuffle=True, device=torch.device("cuda"))
    batches = list(loader.epoch(0))
    assert loader.resident and all(b.images.is_cuda and b.labels.is_cuda for b in batches)
    assert sum(len(b.labels) for b in batches) == 100


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_crop_scale_outside_its_range_is_a_clear_error(value: float) -> None:
    from imgclf.config import resolve_config
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match="crop_scale"):
        resolve_config(None, {"augment.crop_scale": value})


def _smooth_picture(size: int, n: int = 6) -> torch.Tensor:
    """The same smooth picture sampled at size×size pixel centres (bilinear sampling is nearly exact)."""
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    picture = 127.5 + 60 * torch.sin(2 * math.pi * 1.3 * u) + 60 * torch.cos(2 * math.pi * 0.9 * v + 0.4)
    return picture.float().expand(n, 1, size, size).clone()


@pytest.mark.parametrize(
    "settings", [{"crop_scale": 0.3}, {"crop_scale": 0.3, "rotation": 20, "width_shift": 0.1, "shear": 10}]
)
def test_a_larger_cached_picture_warps_to_the_same_model_size_picture(settings: dict) -> None:
    """Training rows cached 1.15× larger for crops are warped straight to the model's size, and a seed
    draws the same transform at either size: the outputs agree to within interpolation error."""
    cfg = _cfg(**settings, hflip=True)
    at_model_size = BatchAugment(cfg, seed=4, size=(48, 48))(_smooth_picture(48))
    from_larger = BatchAugment(cfg, seed=4, size=(48, 48))(_smooth_picture(55))
    another_seed = BatchAugment(cfg, seed=5, size=(48, 48))(_smooth_picture(55))
    assert from_larger.shape == (6, 1, 48, 48)
    assert (from_larger - at_model_size).abs().max() < 1.5  # of 0..255
    assert (another_seed - at_model_size).abs().mean() > 10  # the comparison can tell transforms apart


def test_output_size_without_a_geometric_setting_resizes() -> None:
    out = BatchAugment(_cfg(brightness=0.2), seed=0, size=(8, 8))(torch.full((3, 1, 16, 16), 100.0))
    assert out.shape == (3, 1, 8, 8)
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # a flat image stays flat


def _numbered_batch(n: int = 8, size: int = 10) -> torch.Tensor:
    """Sample i is a flat image of value i."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def test_mixup_blends_each_sample_with_its_mirror_in_the_batch() -> None:
    images, labels = _numbered_batch(), torch.arange(8) % 3
    mixed, others, lam = BatchMix(mixup=0.4, cutmix=0.0, seed=1)(images, labels)
    assert 0.0 < lam < 1.0
    expected = lam * torch.arange(8.0) + (1 - lam) * torch.arange(8.0).flip(0)
    assert torch.allclose(mixed[:, 0, 0, 0], expected)
    assert torch.equal(others, labels.flip(0))
    again = BatchMix(mixup=0.4, cutmix=0.0, seed=1)(images, labels)
    assert torch.equal(again[0], mixed) and again[2] == lam  # seeded


def test_cutmix_pastes_a_box_whose_area_is_the_returned_share() -> None:
    images, labels = _numbered_batch(size=32), torch.arange(8)
    mix = BatchMix(mixup=0.0, cutmix=1.0, seed=3)
    for _ in range(20):
        mixed, others, lam = mix(images, labels)
        own = mixed == images
        pasted = mixed == images.flip(0)
        assert (own | pasted).all()  # every pixel comes from one of the two images, unblended
        assert own[0, 0].float().mean().item() == pytest.approx(lam)
        assert torch.equal(others, labels.flip(0))


def test_mixing_draws_lambda_from_beta_and_switches_between_the_two() -> None:
    images, labels = _numbered_batch(2, 40), torch.arange(2)
    mix = BatchMix(mixup=0.4, cutmix=0.0, seed=0)
    lams = np.array([mix(images, labels)[2] for _ in range(3000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.1)  # Beta(a, a): 1/(4(2a+1))
    both = BatchMix(mixup=0.4, cutmix=1.0, seed=0)
    blended = [bool((both(images, labels)[0] % 1 != 0).any()) for _ in range(400)]
    assert 0.4 < np.mean(blended) < 0.6  # about half MixUp (fractional values), half CutMix
