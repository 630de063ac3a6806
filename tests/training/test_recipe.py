"""Zero-flag training: the model, the recipe and its settings chosen from the data, each said in one
line, every flag the user gives winning; the transfer recipe's head, plan and optimizer."""

from __future__ import annotations

import csv
import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import imgclf
from conftest import write_class_folders
from imgclf.artifact import load_artifact
from imgclf.cli import app
from imgclf.config import resolve_config
from imgclf.data.decode import ImageHeader
from imgclf.data.imageset import ImageSet
from imgclf.errors import ConfigError
from imgclf.features.head import SCALE_FLOOR, fit_head, load_head
from imgclf.models.factory import create_model
from imgclf.runs import RunFolder
from imgclf.training.events import Callback, TrainState
from imgclf.training.optim import Schedule, warmup_cosine
from imgclf.training.recipe import resolve_recipe
from imgclf.training.transfer import (
    FINAL_RESERVE,
    FINETUNE_MAX_EPOCHS,
    FINETUNE_MIN_EPOCHS,
    Replan,
    create_finetune_optimizer,
    plan_finetune,
)

runner = CliRunner()


def _images(count: int, size: tuple[int, int], mode: str) -> ImageSet:
    image_set = ImageSet(
        [f"{i}.png" for i in range(count)],
        np.arange(count) % 2,
        ["a", "b"],
        reader=None,  # type: ignore[arg-type]
        layout="class-folders",
        source="generated",
    )
    image_set.headers = [ImageHeader(size[0], size[1], mode, "PNG", False)] * count
    return image_set


@pytest.mark.parametrize(
    ("count", "size", "mode", "model", "pretrained", "recipe"),
    [
        (60_000, (28, 28), "L", "cnn", False, "plain"),  # MNIST
        (50_000, (32, 32), "RGB", "cnn", False, "plain"),  # CIFAR-sized
        (200, (25, 25), "L", "efficientnet_lite0", True, "transfer"),  # few small images: LFW faces
        (2_000, (500, 375), "RGB", "efficientnet_lite0", True, "transfer"),  # photos
        (20_000, (512, 512), "L", "efficientnet_lite0", True, "transfer"),  # grey X-rays are photos too
    ],
)
def test_the_model_and_recipe_follow_the_data(
    count: int, size: tuple[int, int], mode: str, model: str, pretrained: bool, recipe: str
) -> None:
    cfg = resolve_config(None, {})
    assert cfg.model.name == "auto" and cfg.train.recipe == "auto" and cfg.train.epochs is None
    cfg, lines = resolve_recipe(cfg, _images(count, size, mode), "cpu")
    assert (cfg.model.name, cfg.model.pretrained, cfg.train.recipe) == (model, pretrained, recipe)
    assert lines[0].startswith(f"model {model}") and all("\n" not in line for line in lines)
    if recipe == "transfer":
        assert lines[1].startswith("recipe transfer")
        assert (cfg.train.lr, cfg.train.monitor, cfg.train.finetune_bn, cfg.train.batch_size) == (
            1e-3,
            "val_acc",
            "frozen",
            32,
        )
        assert cfg.augment.preset == "strong" and cfg.augment.rotation == 30 and cfg.augment.hflip
        assert cfg.train.epochs is None  # planned after the head, from the measured speed
        assert cfg.train.time_limit == max(3.0, round(count * 3 / 2000, 1)) and "time limit" in lines[-1]
        assert cfg.train.unfreeze == "3"  # the last blocks fine-tune, the frozen part without gradients
        # the backbone's own resolution, small images included (they lose accuracy read smaller)
        assert cfg.data.image_size is None and len(lines) == 3
        assert cfg.train.finetune_size == 0  # fine-tuning at the model's size throughout
    else:
        assert (cfg.train.lr, cfg.train.monitor, cfg.train.epochs, cfg.train.time_limit) == (
            2e-3,
            "val_loss",
            10,
            0.0,
        )
        assert lines[1].startswith("recipe plain with the") and cfg.augment.width_shift == 0.1
        if mode == "L":  # digits and glyphs are never mirrored; objects at 32 px are
            assert cfg.augment.preset == "digits" and not cfg.augment.hflip
        else:
            assert cfg.augment.preset == "light" and cfg.augment.hflip


def test_flags_the_user_gives_win() -> None:
    photos = _images(1_000, (400, 300), "RGB")
    cfg = resolve_config(
        None, {"train.lr": 5e-4, "train.epochs": 3, "augment.preset": "light", "train.monitor": "val_loss"}
    )
    cfg, _ = resolve_recipe(cfg, photos, "cpu")
    assert cfg.train.recipe == "transfer"
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.monitor) == (5e-4, 3, "val_loss")
    assert cfg.augment.preset == "light" and cfg.train.time_limit == 0.0  # epochs given: nothing planned
    explicit = resolve_config(None, {"model.name": "cnn-small"})
    explicit, lines = resolve_recipe(explicit, photos, "cpu")
    assert lines == []  # nothing guessed, nothing said
    assert explicit.train.recipe == "plain" and explicit.augment.preset == "none"
    staged = resolve_config(None, {"train.head_only": True})
    staged, _ = resolve_recipe(staged, photos, "cpu")
    assert staged.model.name == "efficientnet_lite0" and staged.train.head_only
    assert staged.train.recipe == "head-only"
    gpu = resolve_config(None, {})
    gpu, _ = resolve_recipe(gpu, photos, "cuda")
    assert gpu.train.time_limit == 0.0
    given = resolve_config(None, {"train.time_limit": 2.5})
    given, _ = resolve_recipe(given, photos, "cpu")
    assert given.train.time_limit == 2.5
    with pytest.raises(ConfigError, match="add --pretrained"):
        resolve_recipe(resolve_config(None, {"model.name": "cnn", "train.recipe": "transfer"}), photos)
    with pytest.raises(ConfigError, match="own stages"):
        resolve_recipe(resolve_config(None, {"train.recipe": "transfer", "train.freeze_epochs": 1}), photos)


def test_the_head_is_fitted_exactly_and_folds_the_standardization() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 40)) * np.linspace(0.1, 30, 40)  # very different feature scales
    labels = rng.integers(0, 3, 600)
    features = (centres[labels] + rng.normal(0, 2, (600, 40)) * np.linspace(0.1, 30, 40)).astype(np.float32)
    fit = fit_head(features[:450], labels[:450], features[450:], labels[450:], 3)
    assert fit.val_acc > 0.9 and fit.train_acc > 0.9
    model = create_model({"name": "cnn", "num_classes": 3, "in_channels": 1, "image_size": [8, 8]})
    model.head = torch.nn.Sequential(torch.nn.Linear(40, 3))
    load_head(model, fit)
    logits = model.head(torch.from_numpy(features[450:]))
    assert (logits.argmax(1).numpy() == labels[450:]).mean() == pytest.approx(fit.val_acc)
    without_val = fit_head(features[:450], labels[:450], None, None, 3)  # L2 by cross-validation
    assert np.isnan(without_val.val_acc) and without_val.train_acc > 0.9


def _dormant_channels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """600 images' features as a backbone gives them on a new domain: 20 channels that tell the 3
    classes apart, and 200 that the images hardly light (near 0, small noise, nothing of the class)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 600)
    informative = rng.normal(0, 1, (3, 20))[labels] + rng.normal(0, 1.5, (600, 20))
    dormant = np.abs(rng.normal(0, 0.01, (600, 200)))
    return np.hstack([informative, dormant]).astype(np.float32), labels


@pytest.mark.parametrize("floor", [SCALE_FLOOR, 0.0])
def test_channels_the_images_hardly_light_are_not_blown_up_to_decide_answers(floor) -> None:
    """Standardized to unit variance, the dormant channels weigh as much as the informative ones,
    and a head fitted on 60 images learns their noise (0.67 on the other images); with the floor of
    `standardized` they stay small and the head answers as the informative channels say."""
    accuracies = []
    for seed in range(3):
        features, labels = _dormant_channels(seed)
        train, val = slice(0, 60), slice(60, 90)
        fit = fit_head(features[train], labels[train], features[val], labels[val], 3, 0.1, floor=floor)
        logits = features[90:] @ fit.weight.numpy().T + fit.bias.numpy()
        accuracies.append(float((logits.argmax(1) == labels[90:]).mean()))
    if floor:
        assert np.mean(accuracies) > 0.8, accuracies
    else:  # the data shows the failure the floor prevents
        assert np.mean(accuracies) < 0.75, accuracies


def test_a_prior_head_keeps_what_a_few_training_images_cannot_teach() -> None:
    """`imgclf update`'s refit: from the run's head (here one fitted on 2,000 images), 24 training
    images only adjust it; fitted from zero on those 24 alone, the head is far worse."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 200))
    labels = rng.integers(0, 3, 2_600)
    features = (centres[labels] + rng.normal(0, 8.0, (2_600, 200))).astype(np.float32)
    good = fit_head(features[:2_000], labels[:2_000], features[2_000:2_300], labels[2_000:2_300], 3)
    few, val = slice(2_300, 2_324), slice(2_324, 2_600)
    alone = fit_head(features[few], labels[few], features[val], labels[val], 3)
    prior = (good.weight.double().numpy(), good.bias.double().numpy())
    kept = fit_head(features[few], labels[few], features[val], labels[val], 3, prior=prior)
    logits = features[val] @ prior[0].T + prior[1]
    prior_acc = float((logits.argmax(1) == labels[val]).mean())
    assert kept.val_acc >= prior_acc - 0.01 and kept.val_acc > alone.val_acc + 0.05, (
        kept.val_acc, prior_acc, alone.val_acc,
    )  # fmt: skip


def test_update_keeps_the_old_head_adjusted_only_when_validation_clearly_says_so() -> None:
    from types import SimpleNamespace

    from imgclf.training.update import _refit

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 200))
    labels = rng.integers(0, 3, 2_600)
    features = (centres[labels] + rng.normal(0, 8.0, (2_600, 200))).astype(np.float32)
    good = fit_head(features[:2_000], labels[:2_000], features[2_000:2_300], labels[2_000:2_300], 3)
    old = (good.weight.double().numpy(), good.bias.double().numpy())
    cfg = SimpleNamespace(train=SimpleNamespace(label_smoothing=0.0))
    val = np.arange(2_324, 2_600)
    _, head = _refit(features, labels, np.arange(2_300, 2_324), val, 3, cfg, old)  # 24 training images
    assert head == "the run's head adjusted"
    _, head = _refit(features, labels, np.arange(0, 2_000), val, 3, cfg, old)  # the old head's own data
    assert head == "head refitted"


def test_finetuning_is_planned_from_the_data_and_the_time_left() -> None:
    def plan(train: int, val: int, classes: int, seconds_left: float | None):
        return plan_finetune(train, val, classes, 32, 40.0, 120.0, seconds_left)

    small = plan(1_600, 400, 2, None)  # 50 steps per epoch: the most epochs
    assert small.epochs == FINETUNE_MAX_EPOCHS and "50 steps" in small.reason
    assert small.seconds_per_epoch == pytest.approx(1.15 * (1_600 / 40 + 400 / 120))
    assert plan(3_453, 864, 5, None).epochs == FINETUNE_MAX_EPOCHS  # flowers5: 108 steps, 11 wanted
    assert plan(48_000, 12_000, 10, None).epochs == FINETUNE_MIN_EPOCHS
    limited = plan(1_600, 400, 2, 250)
    assert (
        limited.epochs == int((250 - 400 / 120 - FINAL_RESERVE) // limited.seconds_per_epoch) == 4
        and "time limit" in limited.reason
    )
    three = plan(1_600, 400, 2, 170)  # three epochs fit: they run, and Replan may stretch them
    assert three.epochs == FINETUNE_MIN_EPOCHS == 3 and three.wanted == FINETUNE_MAX_EPOCHS
    two = plan(1_600, 400, 2, 120)  # two fit: two run (no cliff from three to none)
    assert two.epochs == 2 and "2.0 min of the time limit left" in two.reason
    # and it says what the planned epochs would cost on top of the limit
    more = math.ceil((FINETUNE_MAX_EPOCHS * two.seconds_per_epoch + 400 / 120 + FINAL_RESERVE - 120) / 60)
    assert f"{FINETUNE_MAX_EPOCHS} epochs would need about {more} min more (--time-limit MIN)" in two.reason
    assert plan(1_600, 400, 2, 80).epochs == 1
    none = plan(1_600, 400, 2, 50)
    assert none.epochs == 0 and "not one epoch of about 50 s fits" in none.reason
    # the epochs grow with the time given, one at a time: never a drop as the time grows
    epochs = [plan(1_600, 400, 2, seconds).epochs for seconds in range(0, 1_000, 5)]
    steps = [later - earlier for earlier, later in itertools.pairwise(epochs)]
    assert set(steps) <= {0, 1} and epochs[-1] == FINETUNE_MAX_EPOCHS
    assert plan(15, 5, 2, None).epochs == 0  # under 10 images per class


def test_the_backbone_learns_more_slowly_than_the_head() -> None:
    model = create_model(
        {"name": "efficientnet_lite0", "num_classes": 2, "in_channels": 3, "image_size": [64, 64]}
    )
    optimizer = create_finetune_optimizer(model, lr=1e-3, backbone_lr=3e-4, weight_decay=0.01)
    head = {id(p) for p in model.get_classifier().parameters()}
    for group in optimizer.param_groups:
        is_head = all(id(p) in head for p in group["params"])
        assert group["lr"] == (1e-3 if is_head else 3e-4)
        assert group["weight_decay"] == (0.01 if group["params"][0].ndim > 1 else 0.0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "dataset"
    write_class_folders(root / "training_set", ["disc", "cross"], 24, size=72, mode="RGB", suffix=".jpg")
    write_class_folders(root / "test_set", ["disc", "cross"], 6, size=72, mode="RGB", suffix=".jpg", seed=5)
    return root


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_zero_flag_training_on_photos_runs_the_transfer_recipe(photos: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = runner.invoke(
        app,
        ["train", str(photos), "--image-size", "64", "--epochs", "2", "--project", str(runs)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # log lines wrap at the terminal's width
    assert "layout split folders training_set → train (48), test_set → test (12)" in output
    assert "model efficientnet_lite0 with ImageNet weights" in output
    assert "recipe transfer" in output and "epoch 0/2 head on cached features" in output
    run_dir = runs / "train"
    rows = _metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert float(rows[2]["lr"]) > 3e-4  # the head's rate (1e-3, decaying), not the backbone's 0.3 share
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "efficientnet_lite0" and saved["model"]["pretrained"] is True
    assert saved["train"]["recipe"] == "transfer" and saved["train"]["epochs"] == 2
    assert saved["augment"]["preset"] == "strong" and saved["train"]["batch_size"] == 32
    assert "test_acc" in (run_dir / "summary.txt").read_text()
    # --resume after the run trains on from the resolved config, without a second head stage
    more = runner.invoke(app, ["train", "--resume", str(run_dir), "--epochs", "3"], catch_exceptions=False)
    assert more.exit_code == 0, more.output
    assert "head on cached features" not in more.output
    assert [row["epoch"] for row in _metrics(run_dir)] == ["0", "1", "2", "3"]


def test_epochs_0_keeps_the_head_where_the_recipe_is_guessed(photos: Path, tmp_path: Path) -> None:
    """`--epochs 0` with no --recipe: the guessed transfer recipe keeps its head alone; where the
    guess is another recipe, a clear error instead of a check that ran before the guess."""
    runs = tmp_path / "runs"
    command = ["train", str(photos), "--image-size", "64", "--epochs", "0", "--project", str(runs)]
    result = runner.invoke(app, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in _metrics(runs / "train")] == ["0"]
    scratch = runner.invoke(app, [*command, "--model", "cnn", "--name", "scratch"])
    assert scratch.exit_code == 2
    output = " ".join(scratch.output.split())
    assert "head alone, but this run trains with recipe plain (no pretrained backbone)" in output
    assert not (runs / "scratch").exists()


def test_a_tight_time_limit_keeps_the_head_alone(tmp_path: Path) -> None:
    # two classes of the same shape: the head cannot be right, so fine-tuning would be wanted
    data = tmp_path / "alike"
    data.mkdir()
    for seed, name in enumerate(("a", "b")):
        write_class_folders(tmp_path / name, ["shape"], 24, size=72, mode="RGB", suffix=".jpg", seed=seed)
        (tmp_path / name / "shape").rename(data / name)
    runs = tmp_path / "runs"
    result = runner.invoke(
        app,
        ["train", str(data), "--image-size", "64", "--time-limit", "0.001", "--project", str(runs)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "no fine-tuning" in output and "time limit" in output, output
    run_dir = runs / "train"
    assert [row["epoch"] for row in _metrics(run_dir)] == ["0"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] is None  # as given
    assert RunFolder(run_dir).read_plan() == 0  # what the run decided is its record, not its config
    assert "best epoch: 0" in (run_dir / "summary.txt").read_text()


def test_the_training_probe_runs_only_where_the_whole_plan_may_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small set's plan fits its time limit even at TRAIN_SPEED_FLOOR of the inference speed: no
    training probe (about 2 s of a 25 s run), and the plan line says so. Where it may not fit, the
    probe times a fine-tuning step and the plan uses that speed."""
    import imgclf.training.transfer as transfer

    data = tmp_path / "alike"  # two classes of the same shape: the head cannot tell them apart
    data.mkdir()
    for seed, name in enumerate(("a", "b")):
        write_class_folders(tmp_path / name, ["shape"], 24, size=72, mode="RGB", suffix=".jpg", seed=seed)
        (tmp_path / name / "shape").rename(data / name)
    probes: list[int] = []

    def probe(model, ctx, batch_size, size=None) -> float:
        probes.append(batch_size)
        return 1e6

    monkeypatch.setattr(transfer, "training_speed", probe)
    command = ["train", str(data), "--image-size", "64", "--project", str(tmp_path / "runs")]
    result = runner.invoke(app, [*command, "--name", "untimed"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "fine-tuning up to 6 epochs of at most about" in output, output
    assert "training not timed, the plan fits even at 0.25 of that" in output and probes == []
    monkeypatch.setattr(transfer, "TRAIN_SPEED_FLOOR", 1e-9)  # no plan fits at this floor
    result = runner.invoke(app, [*command, "--name", "timed"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert probes == [32] and "1000000 images/s training" in output, output


class _Interrupt(Callback):
    """Ctrl-C at the start of a given epoch."""

    def __init__(self, at_epoch: int) -> None:
        self.at_epoch = at_epoch

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_an_interrupted_transfer_run_resumes_to_the_same_weights(photos: Path, tmp_path: Path) -> None:
    settings = {"image_size": [64, 64], "epochs": 3, "project": str(tmp_path / "runs"), "seed": 1}
    reference = imgclf.train(photos, name="reference", **settings)
    with pytest.raises(KeyboardInterrupt):
        imgclf.train(photos, name="interrupted", callbacks=[_Interrupt(2)], **settings)
    interrupted = tmp_path / "runs" / "interrupted"
    resumed = imgclf.train(resume=interrupted)
    assert [row["epoch"] for row in _metrics(interrupted)] == ["0", "1", "2", "3"]
    columns = ("epoch", "train_loss", "val_loss", "val_acc", "lr")
    assert [[row[c] for c in columns] for row in _metrics(interrupted)] == [
        [row[c] for c in columns] for row in _metrics(reference.run_dir)
    ]
    model_a, _ = load_artifact(reference.artifact)
    model_b, _ = load_artifact(resumed.artifact)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_plan_is_corrected_after_the_first_epoch() -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = resolve_config(None, {"train.epochs": 4, "train.warmup_epochs": 0.0})
    schedule = Schedule(optimizer, cfg.train, steps_per_epoch=10)
    state = TrainState(epochs=4, model=model, optimizer=optimizer, schedule=schedule)
    for _ in range(10):  # the first epoch's steps, on the 4-epoch schedule
        optimizer.step()
        schedule.step_batch()
    rate_after_one = optimizer.param_groups[0]["lr"]
    recorded = []
    started = time.perf_counter() - 10.0  # 10 s of the run are gone, 5 of them the first epoch
    replan = Replan(
        seconds=62.0, started=started, wanted=15, validation_seconds=1.0, on_change=recorded.append
    )
    state.epoch = 1
    state.history.append({"epoch": 1, "seconds": 5.0})
    replan.on_epoch_end(state)
    assert state.epochs == 1 + int((62.0 - 10.0 - 1.0 - FINAL_RESERVE) // 5.0) == 8 and recorded == [8]
    optimizer.step()
    schedule.step_batch()  # the second epoch's first step follows the 8-epoch cosine
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * warmup_cosine(11, 0, 80))
    assert optimizer.param_groups[0]["lr"] > rate_after_one
    state.epoch, state.history[-1]["seconds"] = 2, 500.0  # only after the first epoch
    replan.on_epoch_end(state)
    assert state.epochs == 8 and recorded == [8]
