"""A model family that is neither timm's nor a builtin, registered in `models/` alone, works through
the whole tool: training, the last blocks unfrozen, features, Grad-CAM, `unknown` and ONNX export."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_class_folders
from imgclf.models import anatomy, factory
from imgclf.models.anatomy import (
    Anatomy,
    backbone_digest,
    classifier_of,
    feature_map_layer,
    model_blocks,
    penultimate_features,
)
from imgclf.models.factory import ModelFamily, create_model, list_models, register_family


class RingNet(nn.Module):
    """Named unlike timm's networks and imgclf's builtins: stem, rings, pool, out."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU())
        self.rings = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for _ in range(3)]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(8, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for ring in self.rings:
            x = ring(x)
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x))


RING_ANATOMY = Anatomy(
    matches=lambda model: isinstance(model, RingNet),
    classifier=lambda model: model.out,
    features=lambda model, inputs: model.embed(inputs),
    blocks=lambda model: [model.stem, *model.rings],
)
RING_FAMILY = ModelFamily(
    models={"ringnet": "a test family: 3 rings of 8 channels"},
    build=lambda args: RingNet(args["num_classes"], args["in_channels"]),
    anatomy=RING_ANATOMY,
)


@pytest.fixture
def ringnet() -> Iterator[None]:
    families, anatomies = dict(factory.FAMILIES), list(anatomy.ANATOMIES)
    register_family(RING_FAMILY)
    yield
    factory.FAMILIES.clear()
    factory.FAMILIES.update(families)
    anatomy.ANATOMIES[:] = anatomies


def test_the_anatomy_of_a_registered_family(ringnet: None) -> None:
    model = create_model({"name": "ringnet", "num_classes": 3, "in_channels": 1, "image_size": [16, 16]})
    assert classifier_of(model) is model.out
    assert model_blocks(model)[-1] is model.rings[-1]
    inputs = torch.randn(2, 1, 16, 16)
    assert penultimate_features(model, inputs).shape == (2, 8)
    assert feature_map_layer(model, 1, 16, 16) is model.rings[-1][-1]
    digest = backbone_digest(model)
    with torch.no_grad():
        model.out.weight.add_(1.0)  # the classifier is not the backbone
    assert backbone_digest(model) == digest
    assert ("ringnet", "a test family: 3 rings of 8 channels") in list_models("ring*")


def test_a_registered_family_trains_explains_and_exports(tmp_path: Path, ringnet: None) -> None:
    import onnxruntime

    import imgclf
    from imgclf.export.exporter import export_model
    from imgclf.inference.explain import Explainer
    from imgclf.training.finetune import set_trainable

    data = write_class_folders(tmp_path / "data", ["square", "disc", "cross"], 60, size=20)
    run = imgclf.train(
        data, model="ringnet", epochs=6, batch_size=16, image_size=[20, 20], seed=0, min_precision=0.9,
        project=str(tmp_path / "runs"),
    )  # fmt: skip
    predictor = imgclf.load_model(run.artifact)
    calibration = predictor.info.calibration
    assert predictor.unknown_rule is not None, calibration  # the feature bank reads the classifier's input
    image = np.asarray(run_image(data))[None, :, :, None]
    heatmaps, probabilities = Explainer(predictor).explain_arrays(image)
    assert heatmaps.shape == (1, 20, 20) and heatmaps.max() > 0
    assert probabilities.shape == (1, 3)

    frozen = set_trainable(predictor.model, "1")
    trainable = {name for name, p in predictor.model.named_parameters() if p.requires_grad}
    assert trainable == {"rings.2.0.weight", "rings.2.0.bias", "rings.2.1.weight", "rings.2.1.bias",
                         "out.weight", "out.bias"}  # fmt: skip
    assert predictor.model.rings[0][1] in frozen

    result = export_model(run.artifact, tmp_path / "ring.onnx")
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert {output.name for output in session.get_outputs()} >= {"probabilities", "similarity"}


def run_image(data: Path):
    from PIL import Image

    return Image.open(next((data / "disc").iterdir())).convert("L")


def test_depthwise_convolutions_train_in_float32_under_bf16_autocast() -> None:
    """The class swap keeps the parameters and the state_dict; with gradients under bf16 autocast a
    depthwise convolution computes in float32 (its weight gradient too), without them in bf16, and
    outside autocast exactly as nn.Conv2d."""
    import torch
    from torch import nn

    from imgclf.models.anatomy import GradFloat32DepthwiseConv2d, depthwise_gradients_in_float32

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 4, 1))
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    assert depthwise_gradients_in_float32(model) == 1
    assert type(model[1]) is GradFloat32DepthwiseConv2d and type(model[0]) is nn.Conv2d
    assert model.state_dict().keys() == plain.keys()
    assert torch.equal(model(x), expected)
    seen = []
    model[1].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
        with torch.no_grad():
            model(x)
    assert seen == [torch.float32, torch.bfloat16]
    assert model[1].weight.grad is not None and model[1].weight.grad.dtype == torch.float32
