"""Multi-label sets through the CLI, on mosaics of real flowers5 photos: train (sigmoid outputs,
thresholds per label, mAP), predict (a `labels` column), evaluate, calibrate, export (the sigmoid
and the thresholds in the graph's metadata), serve and explain."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from imgclf.cli import app

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def flat(text: str) -> str:
    """The CLI's output with its line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[str]]:
    from conftest import SHARED_DATASETS, write_flower_mosaics

    if not (SHARED_DATASETS / "flowers5.zip").is_file():
        pytest.skip(f"flowers5.zip not found in {SHARED_DATASETS}")

    return write_flower_mosaics(tmp_path_factory.mktemp("mosaics"), 150, "pipe", tile=32)


@pytest.fixture(scope="module")
def trained(mosaics, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained on the mosaics with no multi-label flag: the table says it."""
    table, _, _ = mosaics
    runs = tmp_path_factory.mktemp("runs")
    result = invoke(
        "train", table, "--model", "cnn-small", "--epochs", "3", "--batch-size", "16", "--lr", "0.003",
        "--test-split", "0.2", "--project", runs, "--name", "ml",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "is multi-label (label column 'tags' joining labels with '|')" in flat(result.output)
    assert "one sigmoid output per label" in flat(result.output)
    assert "val_map" in result.output and "test_macro_f1" in result.output
    return runs / "ml"


def test_training_writes_a_multi_label_model(trained: Path, mosaics) -> None:
    _, _, classes = mosaics
    info = json.loads((trained / "model" / "imgclf.json").read_text())
    assert info["task"] == "multi-label" and info["format_version"] == 2
    assert info["classes"] == classes and len(info["thresholds"]) == len(classes)
    assert all(0.0 < t <= 1.0 for t in info["thresholds"])
    assert info["training"]["config"]["train"]["monitor"] == "val_map"
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_map" in header
    per_label = list(csv.DictReader((trained / "evaluation" / "per_label.csv").open()))
    assert [row["label"] for row in per_label] == classes
    for name in ("missed_together.png", "label_cooccurrence.png", "misclassified.png", "metrics.json"):
        assert (trained / "evaluation" / name).is_file(), name
    # the manifest's splits hold every label (iterative stratification)
    rows = list(csv.DictReader((trained / "manifest.csv").open()))
    for split in ("train", "val", "test"):
        present = {label for row in rows if row["split"] == split for label in row["label"].split("|")}
        assert set(classes) <= present, split


def test_predict_gives_every_label_at_its_threshold(trained: Path, mosaics, tmp_path: Path) -> None:
    from imgclf.inference.predictor import Predictor

    table, _, classes = mosaics
    images = sorted((table.parent / "images").iterdir())[:20]
    out = tmp_path / "predictions.csv"
    result = invoke("predict", trained, *images, "--output", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:3] == ["path", "labels", "label_1"]
    predictor = Predictor.from_path(trained, backend="torch")
    for row, prediction in zip(rows, predictor.predict([str(p) for p in images], top_k=len(classes))):
        probabilities = dict(zip(prediction.labels, prediction.probabilities))
        expected = [c for c in sorted(classes, key=lambda c: -probabilities[c]) if
                    probabilities[c] >= predictor.thresholds[classes.index(c)]]  # fmt: skip
        assert row["labels"] == "|".join(expected)
    line = invoke("predict", trained, images[0])
    assert line.exit_code == 0 and str(images[0]) in line.output


def test_evaluate_and_calibrate(trained: Path, mosaics, tmp_path: Path) -> None:
    table, _, classes = mosaics
    result = invoke("evaluate", trained, table, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "mAP" in flat(result.output) and "Hamming loss" in flat(result.output)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["count"] == 150 and set(metrics["per_label"]) == set(classes)
    assert 0.0 <= metrics["map"] <= 1.0
    before = json.loads((trained / "model" / "imgclf.json").read_text())["thresholds"]
    result = invoke("calibrate", trained, "--min-precision", "0.9")
    assert result.exit_code == 0, result.output
    assert "thresholds per label for precision ≥ 0.9" in flat(result.output)
    after = json.loads((trained / "model" / "imgclf.json").read_text())["thresholds"]
    assert all(a >= b - 1e-9 for a, b in zip(after, before))  # a stricter precision: higher cuts
    invoke("calibrate", trained)  # back to the F1-best cuts for the other tests
    assert json.loads((trained / "model" / "imgclf.json").read_text())["thresholds"] == pytest.approx(before)


def test_single_label_model_refuses_multi_label_data(mosaics, shapes_model) -> None:
    table, _, _ = mosaics
    artifact, _ = shapes_model
    result = invoke("evaluate", artifact, table)
    assert result.exit_code != 0
    assert "is multi-label" in flat(result.output) and "--single-label" in flat(result.output)


def test_onnx_export_carries_the_sigmoid_and_thresholds(trained: Path, mosaics, tmp_path: Path) -> None:
    import onnxruntime as ort

    from imgclf.inference.predictor import Predictor

    table, _, classes = mosaics
    out = tmp_path / "model.onnx"
    result = invoke("export", trained, "--out", out)
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["imgclf.task"] == "multi-label"
    thresholds = json.loads(metadata["imgclf.thresholds"])
    info = json.loads((trained / "model" / "imgclf.json").read_text())
    assert list(thresholds) == classes and list(thresholds.values()) == pytest.approx(info["thresholds"])
    images = [str(p) for p in sorted((table.parent / "images").iterdir())[:12]]
    exported = Predictor.from_path(out).predict(images)
    torch_model = Predictor.from_path(trained, backend="torch").predict(images)
    assert [p.present for p in exported] == [p.present for p in torch_model]
    assert any(abs(sum(p.probabilities) - 1.0) > 0.05 for p in exported)  # sigmoids, not a softmax


def test_serve_and_explain(trained: Path, mosaics, tmp_path: Path) -> None:
    from imgclf.inference.predictor import Predictor
    from imgclf.serve import ServeSettings, create_app

    table, _, classes = mosaics
    image = sorted((table.parent / "images").iterdir())[3]
    predictor = Predictor.from_path(trained, backend="torch")
    with TestClient(create_app(predictor, ServeSettings())) as client:
        model = client.get("/model").json()
        assert model["task"] == "multi-label" and list(model["thresholds"]) == classes
        answer = client.post("/predict", files={"files": (image.name, image.read_bytes(), "image/jpeg")})
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        assert prediction["labels"] is not None
        assert prediction["label"] == "|".join(item["label"] for item in prediction["labels"])
        for item in prediction["labels"]:
            assert item["probability"] >= item["threshold"]
        explained = client.post(
            "/explain", params={"class": classes[1]},
            files={"files": (image.name, image.read_bytes(), "image/jpeg")},
        )  # fmt: skip
        assert explained.status_code == 200, explained.text
        assert explained.json()["explanations"][0]["label"] == classes[1]
    result = invoke("explain", trained, image, "--class", classes[2], "--out", tmp_path / "cams")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cams" / "explanations.csv").read_text())))
    assert rows[0]["class"] == classes[2]
    probability = float(rows[0]["probability"])
    expected = dict(
        zip(*[getattr(predictor.predict(str(image), top_k=5)[0], k) for k in ("labels", "probabilities")])
    )
    assert probability == pytest.approx(expected[classes[2]], abs=1e-4)  # a sigmoid, as predict gives


def test_transfer_recipe_fits_a_multi_label_head(mosaics, tmp_path: Path) -> None:
    """The zero-flag route: the head on cached Lite0 features (one logistic regression per label),
    then a fine-tuning epoch, the best kept by validation mAP."""
    table, _, _ = mosaics
    result = invoke(
        "train", table, "--recipe", "transfer", "--epochs", "1", "--project", tmp_path, "--name", "transfer",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "head on cached features" in result.output and "mAP" in result.output
    history = list(csv.DictReader((tmp_path / "transfer" / "metrics.csv").open()))
    assert [row["epoch"] for row in history] == ["0", "1"]
    assert all(0.0 < float(row["val_map"]) <= 1.0 for row in history)
    info = json.loads((tmp_path / "transfer" / "model" / "imgclf.json").read_text())
    assert info["task"] == "multi-label" and info["metrics"]["val_map"] > 0.5
