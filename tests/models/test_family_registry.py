"""A family of networks is one file of `imgclf.models.families`: found by name, it trains, predicts
and is listed by `imgclf models`, with nothing else edited."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import imgclf
import imgclf.models.families as families_package
from conftest import write_class_folders
from imgclf.models import anatomy, factory
from imgclf.registry import MODEL_FAMILIES

NEW_FAMILY = '''
    """Tiny strided CNNs (a family in one file)."""

    from torch import nn

    from imgclf.models.anatomy import Anatomy
    from imgclf.models.factory import ModelFamily


    class StrideNet(nn.Module):
        def __init__(self, num_classes, in_channels):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.out = nn.Linear(16, num_classes)

        def embed(self, inputs):
            return self.pool(self.body(self.stem(inputs)))

        def forward(self, inputs):
            return self.out(self.embed(inputs))


    FAMILY = ModelFamily(
        models={"stridenet": "a family from one file: two strided convolutions"},
        build=lambda args: StrideNet(args["num_classes"], args["in_channels"]),
        anatomy=Anatomy(
            matches=lambda model: isinstance(model, StrideNet),
            classifier=lambda model: model.out,
            features=lambda model, inputs: model.embed(inputs),
            blocks=lambda model: [model.stem, model.body],
        ),
    )
'''


def test_a_new_model_family_is_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "stridenet.py").write_text(textwrap.dedent(NEW_FAMILY))
    monkeypatch.setattr(families_package, "__path__", [*families_package.__path__, str(folder)])
    monkeypatch.setattr(factory, "FAMILIES", dict(factory.FAMILIES))
    monkeypatch.setattr(anatomy, "ANATOMIES", list(anatomy.ANATOMIES))
    monkeypatch.setattr(factory, "_FAMILY_MODULES_LOADED", False)
    assert MODEL_FAMILIES.names() == ["stridenet"]
    assert ("stridenet", "a family from one file: two strided convolutions") in imgclf.list_models("stride*")
    data = write_class_folders(tmp_path / "data", ["square", "disc", "cross"], 40, size=20)
    run = imgclf.train(
        data, model="stridenet", epochs=8, batch_size=16, image_size=[20, 20], lr=1e-2,
        project=str(tmp_path / "runs"),
    )  # fmt: skip
    assert run.metrics["val_acc"] >= 0.6
    answer = imgclf.load_model(run.artifact).predict(str(sorted((data / "disc").iterdir())[0]))[0]
    assert answer.label in ("square", "disc", "cross")
