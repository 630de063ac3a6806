"""augment-preview shows what `train` would choose for the whole data set, not for its sample."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_class_folders
from imgclf.config import resolve_config
from imgclf.preview import write_augment_preview
from imgclf.training import recipe


def test_many_small_digits_preview_the_scratch_cnn_at_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(recipe, "SCRATCH_MIN_IMAGES", 300)  # MNIST-like: many small grey images
    data = write_class_folders(tmp_path / "digits", ["0", "1", "2"], 110, size=28)
    with caplog.at_level(logging.INFO, logger="imgclf"):
        out = write_augment_preview(str(data), tmp_path / "grid.png", resolve_config(), images=3, variants=2)
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "model cnn, from scratch: 330 small images" in said  # the whole set, not its 9-image sample
    assert "digits augmentation" in said
    grid = Image.open(out)
    assert grid.width < 28 * 4 * 4  # shown at 28 px (scaled for the eye), not at Lite0's 224


def test_photos_preview_the_pretrained_backbone_with_strong_augmentation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_class_folders(tmp_path / "photos", ["a", "b"], 12, size=120, mode="RGB", suffix=".jpg")
    with caplog.at_level(logging.INFO, logger="imgclf"):
        out = write_augment_preview(str(data), tmp_path / "grid.png", resolve_config(), images=2, variants=2)
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "model efficientnet_lite0" in said and "recipe transfer" in said
    assert Image.open(out).width >= 224 * 3  # at the backbone's size
