"""The config is resolved once (defaults < file < flags < what `auto` chooses) and frozen; what a run
decides later is run state, so `config.yaml` and the model's `imgclf.json` agree on every setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import imgclf
from imgclf.config import resolve_config
from imgclf.data.headers import ImageHeader
from imgclf.data.imageset import ImageSet
from imgclf.runs import PLAN_FILE, RunFolder
from imgclf.training.recipe import resolve_recipe

FAST = {"image_size": [48, 48], "batch_size": 16, "seed": 0}
LITE0 = {"model": "efficientnet_lite0", "pretrained": True}


def _photos(count: int) -> ImageSet:
    image_set = ImageSet(
        [f"{i}.jpg" for i in range(count)],
        np.arange(count) % 2,
        ["a", "b"],
        reader=None,  # type: ignore[arg-type]
        layout="class-folders",
        source="generated",
    )
    image_set.headers = [ImageHeader(400, 300, "RGB", "JPEG", False)] * count
    return image_set


def test_a_resolved_config_cannot_change() -> None:
    cfg = resolve_config(None, {"train.lr": 0.01})
    assert cfg.frozen and cfg.train.frozen
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"TrainConfig\.epochs"):
        cfg.train.epochs = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    chosen, lines = resolve_recipe(cfg, _photos(400), "cpu")
    assert chosen is not cfg and chosen.frozen and lines
    assert (cfg.model.name, chosen.model.name) == ("auto", "efficientnet_lite0")  # the input is as it was
    assert chosen.train.lr == 0.01  # the flag still wins over the recipe
    again, said = resolve_recipe(chosen, _photos(400), "cpu")
    assert again == chosen and said == []  # a resolved config comes back the same, nothing guessed


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"model": "cnn-small", "epochs": 2}, id="plain"),
        pytest.param({**LITE0, "head_only": True, "epochs": 2}, id="head-only"),
        pytest.param({**LITE0, "freeze_epochs": 1, "finetune_epochs": 1}, id="staged"),
        pytest.param({"time_limit": 5}, id="transfer-planned"),
        pytest.param({"recipe": "transfer", "epochs": 1}, id="transfer-given"),
    ],
)  # fmt: skip
def test_config_yaml_and_the_model_agree_for_every_recipe(
    shapes_dir: Path, tmp_path: Path, settings: dict
) -> None:
    run = imgclf.train(shapes_dir, project=str(tmp_path / "runs"), **FAST, **settings)
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert info["training"]["config"] == saved
    assert saved["model"]["name"] != "auto" and saved["train"]["recipe"] != "auto"
    planned = info["training"]["epochs_planned"]
    if "time_limit" in settings:  # imgclf planned the epochs: the plan is a record, not a setting
        assert saved["train"]["recipe"] == "transfer" and saved["train"]["epochs"] is None
        assert RunFolder(run.run_dir).read_plan() == planned
    else:
        assert saved["train"]["epochs"] == planned == settings.get("epochs", 2)
        assert not (run.run_dir / PLAN_FILE).exists()


def test_resume_reads_the_planned_epochs_from_the_run(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert folder.read_plan() is None
    folder.write_plan(7)
    assert folder.read_plan() == 7
    from imgclf.training.trainer import planned_epochs

    transfer = resolve_config(None, {"train.recipe": "transfer"})
    assert planned_epochs(transfer, folder, resume=tmp_path) == 7
    assert planned_epochs(transfer, folder, resume=None) is None  # a new run plans its own
    given = resolve_config(None, {"train.epochs": 3})
    assert planned_epochs(given, folder, resume=tmp_path) == 3
