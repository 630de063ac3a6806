"""Configuration: defaults < YAML < flags, typed and validated; unknown keys are an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.config import load_config, resolve_config, save_config
from imgclf.errors import ConfigError


def test_defaults_yaml_and_overrides(tmp_path: Path) -> None:
    file = tmp_path / "settings.yaml"
    file.write_text("train:\n  lr: 0.01\n  epochs: 3\nmodel:\n  name: cnn-small\n")
    cfg = resolve_config(file, {"train.epochs": 7, "data.image_size": "32"})
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.name) == (0.01, 7, "cnn-small")
    assert cfg.data.image_size == [32, 32]
    assert cfg.train.optimizer == "adamw"  # default kept
    assert cfg.train.batch_size is None  # left for the recipe to set


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = resolve_config(None, {"augment.preset": "strong", "train.schedule": "cosine"})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrr": 0.1}, "unknown key train.lrr"),
        ({"train.epochs": "many"}, "whole number"),
        ({"train.optimizer": "adagrad"}, "adam, adamw, sgd, rmsprop"),
        ({"data.val_split": 0.7, "data.test_split": 0.4}, "sum below 1"),
        ({"augment.zoom": 1.5}, "augment.zoom"),
        ({"data.channels": 2}, "channels must be 1 or 3"),
    ],
)
def test_invalid_values_name_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, overrides)


def test_unknown_section_in_yaml(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown configuration section 'trainer'"):
        resolve_config(file)
