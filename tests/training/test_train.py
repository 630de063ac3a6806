"""Training end to end on generated data: run folder, artifact, corrupt files, resume, early stop."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import imgclf
from conftest import write_class_folders
from imgclf.artifact import load_artifact
from imgclf.errors import ConfigError, DataError
from imgclf.training.events import Callback, EarlyStopping, KeepBest, TrainState

SMALL = {"model": "cnn-small", "epochs": 3, "batch_size": 16, "seed": 0}


def _train(data, tmp_path: Path, **settings):
    return imgclf.train(data, project=str(tmp_path / "runs"), **{**SMALL, **settings})


def test_train_writes_the_run_folder_and_a_self_contained_model(shapes_dir: Path, tmp_path: Path) -> None:
    run = _train(shapes_dir, tmp_path, test_split=0.2, lr=3e-3)
    names = {p.name for p in run.run_dir.iterdir()}
    assert {
        "config.yaml",
        "manifest.csv",
        "metrics.csv",
        "curves.png",
        "model",
        "last.pt",
        "skipped_files.csv",
        "summary.txt",
    } <= names
    history = run.history
    assert list(history["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(history)
    assert run.metrics["test_acc"] >= 0.9  # the shapes are easy
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "cnn-small" and config["augment"]["rotation"] == 0.0
    with (run.run_dir / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120 and {r["split"] for r in rows} == {"train", "val", "test"}
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert info["format_version"] == 1 and info["classes"] == ["cross", "disc", "square"]
    assert info["preprocessing"]["channels"] == 1 and info["preprocessing"]["height"] == 24
    assert info["dataset"]["fingerprint"] and info["metrics"]["test_acc"] == run.metrics["test_acc"]
    umask = os.umask(0)
    os.umask(umask)
    assert (run.artifact / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert run.artifact.stat().st_mode & 0o777 == 0o777 & ~umask
    # the artifact alone gives the same predictions as the run's model, with no extra arguments
    predictor = imgclf.load_model(run.artifact)
    image = shapes_dir / "disc" / "disc_000.png"
    assert predictor.predict(image)[0].label == "disc"
    array = np.asarray(Image.open(image))
    assert predictor.predict(array)[0].probabilities == pytest.approx(
        predictor.predict(image)[0].probabilities
    )


def test_second_run_gets_a_suffixed_folder(shapes_dir: Path, tmp_path: Path) -> None:
    first = _train(shapes_dir, tmp_path, epochs=1, name="exp")
    second = _train(shapes_dir, tmp_path, epochs=1, name="exp")
    assert (first.run_dir.name, second.run_dir.name) == ("exp", "exp-2")


def test_corrupt_and_truncated_images_are_skipped_and_listed(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 20, suffix=".jpg")
    good = (root / "a" / "a_000.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / "garbage.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "b" / "readme.txt").write_text("hello")
    for cache in ("ram", "none"):
        run = _train(root, tmp_path, epochs=1, cache=cache, workers=0, name=f"cache-{cache}")
        with (run.run_dir / "skipped_files.csv").open() as handle:
            skipped = {row["path"]: row["kind"] for row in csv.DictReader(handle)}
        assert skipped["b/readme.txt"] == "non-image"
        assert skipped["b/garbage.jpg"] == "corrupt"
        if cache == "ram":  # found when decoding once before training
            assert skipped["a/truncated.jpg"] == "corrupt"


def test_empty_class_and_no_images_are_clear_errors(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 5)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="class 'empty' has no usable image"):
        _train(root, tmp_path)
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable image"):
        _train(tmp_path / "none", tmp_path)


class _Interrupt(Callback):
    """Simulates Ctrl-C at the start of a given epoch."""

    def __init__(self, at_epoch: int) -> None:
        self.at_epoch = at_epoch

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == self.at_epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("mixing", [{}, {"mixup": 0.4, "cutmix": 1.0}])
def test_resume_continues_exactly_where_it_stopped(shapes_dir: Path, tmp_path: Path, mixing: dict) -> None:
    settings = {"epochs": 4, "augment": "light", "schedule": "cosine", "model": "cnn", "filters": [8, 16]}
    settings.update(mixing)  # MixUp/CutMix draws are seeded per epoch too
    reference = _train(shapes_dir, tmp_path, name="reference", **settings)
    with pytest.raises(KeyboardInterrupt):
        _train(shapes_dir, tmp_path, name="interrupted", callbacks=[_Interrupt(2)], **settings)
    interrupted = tmp_path / "runs" / "interrupted"
    assert len(imgclf.train(resume=interrupted).history) == 4
    assert _rows(interrupted) == _rows(reference.run_dir)
    model_a, _ = load_artifact(reference.artifact)
    model_b, _ = load_artifact(interrupted / "model")
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def _rows(run_dir: Path) -> list:
    """metrics.csv rows without the timing columns (which differ between runs)."""
    with (run_dir / "metrics.csv").open() as handle:
        return [
            (r["epoch"], r["train_loss"], r["val_loss"], r["val_acc"], r["lr"])
            for r in csv.DictReader(handle)
        ]


def test_early_stopping_restores_the_best_epoch() -> None:
    saved = []
    state = TrainState(epochs=10, model=torch.nn.Linear(1, 1), optimizer=None, schedule=None)
    callbacks = [KeepBest(lambda s: saved.append(s.epoch)), EarlyStopping(patience=2)]
    for epoch, val_loss in enumerate([1.0, 0.5, 0.6, 0.55, 0.4], start=1):
        state.epoch = epoch
        state.history.append({"epoch": epoch, "val_loss": val_loss})
        for callback in callbacks:
            callback.on_epoch_end(state)
        if state.stop:
            break
    assert saved == [1, 2] and state.stop and state.epoch == 4 and state.best_epoch == 2


def test_training_from_arrays_and_a_dataframe(tmp_path: Path, shapes_dir: Path) -> None:
    import pandas as pd

    paths = sorted(shapes_dir.rglob("*.png"))
    images = np.stack([np.asarray(Image.open(p)) for p in paths])
    labels = [p.parent.name for p in paths]
    run = imgclf.train(images, labels=labels, project=str(tmp_path / "runs"), **{**SMALL, "epochs": 2})
    assert run.metrics["val_acc"] > 0.6
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": labels})
    run = imgclf.train(frame, project=str(tmp_path / "runs"), **{**SMALL, "epochs": 2})
    assert run.metrics["val_acc"] > 0.6


def test_rgb_and_grayscale_mixed_data_trains_in_rgb(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 10)
    write_class_folders(tmp_path / "data", ["a", "b"], 2, mode="RGB", seed=9, suffix=".jpg")
    run = _train(root, tmp_path, epochs=1)
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert info["preprocessing"]["channels"] == 3
    buffer = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 0, 0)).save(buffer, format="JPEG")
    prediction = imgclf.load_model(run.artifact).predict(Image.open(io.BytesIO(buffer.getvalue())))
    assert prediction[0].label in ("a", "b")


def test_lr_scaling_rules() -> None:
    from imgclf.training.optim import scale_lr

    assert scale_lr(1e-3, 512, "none") == 1e-3
    assert scale_lr(1e-3, 512, "linear") == pytest.approx(8e-3)
    assert scale_lr(1e-3, 256, "sqrt") == pytest.approx(2e-3)
    assert scale_lr(1e-3, 32, "linear", base_batch=32) == 1e-3


def test_scaled_learning_rate_is_the_one_trained_with(shapes_dir: Path, tmp_path: Path) -> None:
    run = _train(
        shapes_dir, tmp_path, epochs=1, batch_size=32, lr=1e-3, lr_scaling="linear", schedule="constant",
        warmup_epochs=0, name="scaled",
    )  # fmt: skip
    assert run.history["lr"].iloc[0] == pytest.approx(1e-3 * 32 / 64)


def test_compiled_training_saves_a_plain_model(shapes_dir: Path, tmp_path: Path) -> None:
    """--compile trains through torch.compile; the artifact loads into the plain network."""
    run = _train(shapes_dir, tmp_path, epochs=1, model="mlp", compile=True, name="compiled")
    model, _ = load_artifact(run.artifact)
    assert not any("_orig_mod" in key for key in model.state_dict())
    assert run.history["train_loss"].iloc[0] > 0


def test_training_flushes_denormal_floats_and_puts_the_mode_back(shapes_dir: Path, tmp_path: Path) -> None:
    supported = torch.set_flush_denormal(False)  # True where the processor can flush (x86 with SSE3)
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            seen.append(torch.tensor([1e-39], dtype=torch.float32).item())  # denormal in float32

    imgclf.train(
        shapes_dir, model="mlp", epochs=1, project=tmp_path, name="x", verbose=False, callbacks=[Probe()]
    )
    assert seen == [0.0 if supported else pytest.approx(1e-39)]
    assert torch.tensor([1e-39], dtype=torch.float32).item() == pytest.approx(1e-39)  # as it was


def test_random_resized_crops_train_from_larger_rows_and_save_the_model_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_class_folders(tmp_path / "shapes", ["square", "disc", "cross"], 30, size=40)
    with caplog.at_level("INFO", logger="imgclf"):
        run = _train(root, tmp_path, image_size="32", crop_scale=0.6, epochs=4, lr=3e-3, test_split=0.2)
    assert "training images cached at 37×37 (model input 32×32)" in caplog.text
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert (info["preprocessing"]["height"], info["preprocessing"]["width"]) == (32, 32)
    assert run.metrics["test_acc"] >= 0.8
    prediction = imgclf.load_model(run.artifact).predict(root / "disc" / "disc_000.png")[0]
    assert prediction.label == "disc"


def test_mixup_and_cutmix_train_a_good_model_and_are_checked(shapes_dir: Path, tmp_path: Path) -> None:
    run = _train(shapes_dir, tmp_path, mixup=0.4, cutmix=1.0, epochs=6, lr=3e-3, test_split=0.2)
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert config["augment"]["mixup"] == 0.4 and config["augment"]["cutmix"] == 1.0
    assert run.metrics["test_acc"] >= 0.85
    assert run.history["train_loss"].iloc[-1] > 0.2  # mixed targets keep the training loss up
    with pytest.raises(ConfigError, match="mixup"):
        _train(shapes_dir, tmp_path, mixup=-1.0)
    with pytest.raises(ConfigError, match="head_only"):
        _train(shapes_dir, tmp_path, model="efficientnet_lite0", pretrained=True, head_only=True, cutmix=1.0)
