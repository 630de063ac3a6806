"""The run's numbers in the dashboards users already have: TensorBoard per epoch and at the end; a
missing extra is one line at start, before any work."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

import imgclf
from imgclf.errors import UsageError

FAST = {"model": "cnn-small", "epochs": 2, "image_size": [24, 24]}


def test_a_missing_extra_stops_the_run_before_any_work(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(
        UsageError,
        match=r"--log tensorboard needs the optional packages: pip install 'imgclf\[tensorboard\]'",
    ):
        imgclf.train(shapes_dir, log="tensorboard", project=str(tmp_path / "runs"), **FAST)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_tensorboard_receives_every_epoch_and_the_runs_end(shapes_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="needs imgclf[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = imgclf.train(shapes_dir, log=["tensorboard"], project=str(tmp_path / "runs"), **FAST)
    events = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    with (run.run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    logged = events.Scalars("accuracy/val")
    assert [e.step for e in logged] == [int(r["epoch"]) for r in rows] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([float(r["val_acc"]) for r in rows], abs=1e-5)
    for tag in ("loss/train", "loss/val", "accuracy/train", "learning_rate", "speed/images_per_s"):
        assert len(events.Scalars(tag)) == len(rows), tag
    assert events.Scalars("final/val_acc")[0].value == pytest.approx(run.metrics["val_acc"], abs=1e-6)
    phases = dict(run.phases)  # the phase table, as in phases.csv
    assert events.Scalars("phase_seconds/epoch_2")[0].value == pytest.approx(phases["epoch 2"], abs=1e-4)
    assert events.Scalars("phase_seconds/decode_and_cache")[0].value == pytest.approx(
        phases["decode and cache"], abs=1e-4
    )
    assert {"curves", "confusion_matrix"} <= set(tags["images"])
    assert events.Images("confusion_matrix")[0].width > 100
    assert "config/text_summary" in tags["tensors"]


def test_mlflow_receives_the_config_every_epoch_and_the_artifacts(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="needs imgclf[mlflow]")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "runs"
    run = imgclf.train(shapes_dir, log="mlflow", project=str(project), **FAST)
    client = MlflowClient(tracking_uri=f"sqlite:///{project.resolve() / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert found.info.run_name == run.run_dir.name and found.info.status == "FINISHED"
    assert found.data.params["train.recipe"] == "plain" and found.data.params["model.name"] == "cnn-small"
    history = client.get_metric_history(found.info.run_id, "val_acc")
    with (run.run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    assert sorted(m.value for m in history) == pytest.approx(
        sorted(float(r["val_acc"]) for r in rows), abs=1e-5
    )
    assert found.data.metrics["final_val_acc"] == pytest.approx(run.metrics["val_acc"], abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"curves.png", "evaluation", "model", "config.yaml"} <= artifacts
    model = {a.path for a in client.list_artifacts(found.info.run_id, "model")}
    assert "model/imgclf.json" in model and "model/model.safetensors" in model
    assert (project / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # nothing outside
    again = imgclf.train(resume=run.run_dir, epochs=3)  # --resume goes on in the same MLflow run
    (resumed,) = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert resumed.info.run_id == found.info.run_id and resumed.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(found.info.run_id, "val_acc"))
    assert steps == [1, 2, 3] and again.run_dir == run.run_dir


def test_a_missing_mlflow_stops_the_run_before_any_work(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        UsageError, match=r"--log mlflow needs the optional packages: pip install 'imgclf\[mlflow\]'"
    ):
        imgclf.train(shapes_dir, log="csv,mlflow", project=str(tmp_path / "runs"), **FAST)
    assert not (tmp_path / "runs").exists()
