"""Models: builtins follow the data's channels and size; timm from scratch; a Keras-like summary."""

from __future__ import annotations

import pytest
import torch

from imgclf.config import ModelConfig
from imgclf.errors import ConfigError, ModelError
from imgclf.models import create_model, list_models, model_args
from imgclf.models.summary import summarize_model


@pytest.mark.parametrize("name", ["mlp", "cnn-small", "cnn-basic", "cnn"])
@pytest.mark.parametrize(("channels", "size"), [(1, [28, 28]), (3, [32, 48])])
def test_builtin_models_take_the_data_shape(name: str, channels: int, size: list[int]) -> None:
    model = create_model(model_args(ModelConfig(name=name), 5, channels, size))
    assert model(torch.zeros(2, channels, *size)).shape == (2, 5)


def test_cnn_basic_is_the_tutorial_network() -> None:
    model = create_model(model_args(ModelConfig(name="cnn-basic"), 10, 1, [28, 28]))
    summary = summarize_model(model, (1, 28, 28))
    assert summary.total_params == 594_922  # Keras reports the same for its Conv32-32-64-64-Dense512
    assert summary.trainable_params == summary.total_params
    assert any(row.output_shape == "(None, 1024)" for row in summary.rows)
    assert "Total params: 594,922" in summary.to_text()


def test_configurable_cnn_flags() -> None:
    cfg = ModelConfig(name="cnn", filters=[8, 16], dense=[32], dropout=0.1, batchnorm=False)
    args = model_args(cfg, 3, 3, [16, 16])
    assert args["filters"] == [8, 16] and args["batchnorm"] is False
    model = create_model(args)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


def test_timm_model_from_scratch_with_grayscale_input() -> None:
    model = create_model(model_args(ModelConfig(name="resnet18"), 4, 1, [64, 64]))
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 4)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="cnn-basic"):
        model_args(ModelConfig(name="cnn-basik"), 2, 1, [28, 28])


def test_too_small_images_are_a_clear_error() -> None:
    with pytest.raises(ModelError, match="too small"):
        create_model(model_args(ModelConfig(name="cnn-basic"), 2, 1, [8, 8]))


def test_list_models_has_builtins_and_timm() -> None:
    names = [name for name, _ in list_models()]
    assert names[:4] == ["mlp", "cnn-small", "cnn-basic", "cnn"]
    assert "resnet18" in names
    assert [name for name, _ in list_models("resnet1*")][:1] == ["resnet10t"] or "resnet18" in dict(
        list_models("resnet1*")
    )
