"""Evaluation outputs, checked against an independent recomputation from predictions.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

import imgclf
from conftest import write_class_folders
from imgclf.cli import app
from imgclf.evaluation.metrics import compute_metrics, expected_calibration_error, top_k_accuracy
from imgclf.evaluation.plots import confusion_figure

FILES = {
    "metrics.json",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "most_confused.csv",
    "misclassified.png",
    "predictions.csv",
    "reliability.png",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("evaluate")
    data = write_class_folders(root / "data", ["square", "disc", "cross", "stripes"], 30)
    # a weak model (one epoch) so that there are mistakes to count
    result = imgclf.train(
        data, model="mlp", epochs=1, batch_size=32, test_split=0.3, seed=3, project=str(root / "runs")
    )
    return result, data


def test_train_writes_the_validation_evaluation(run) -> None:
    result, _ = run
    assert {p.name for p in (result.run_dir / "evaluation").iterdir()} >= FILES
    metrics = json.loads((result.run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["accuracy"] == pytest.approx(result.metrics["val_acc"])
    assert (result.run_dir / "dataset.json").is_file() and (result.run_dir / "samples.png").is_file()


def test_evaluate_agrees_with_its_own_predictions_csv(run, tmp_path: Path) -> None:
    result, data = run
    evaluation = imgclf.evaluate(
        result.artifact, data, manifest=result.run_dir / "manifest.csv", split="test", out=tmp_path / "eval"
    )
    assert {p.name for p in (tmp_path / "eval").iterdir()} >= FILES
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    assert len(rows) == metrics["count"] == 36
    classes = metrics["classes"]
    accuracy = sum(r["true"] == r["predicted"] for r in rows) / len(rows)
    assert metrics["accuracy"] == pytest.approx(accuracy) and evaluation.accuracy == pytest.approx(accuracy)
    assert all(int(r["correct"]) == (r["true"] == r["predicted"]) for r in rows)
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for r in rows:
        counts[classes.index(r["true"]), classes.index(r["predicted"])] += 1
    assert counts.tolist() == metrics["confusion_matrix"]
    for index, name in enumerate(classes):
        support = counts[index].sum()
        assert metrics["per_class"][name]["support"] == support
        assert metrics["per_class"][name]["recall"] == pytest.approx(counts[index, index] / support)
    losses = [float(r["loss"]) for r in rows]
    assert metrics["loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    confused = list(csv.DictReader((tmp_path / "eval" / "most_confused.csv").open()))
    for row in confused:
        assert int(row["count"]) == counts[classes.index(row["true"]), classes.index(row["predicted"])]


def test_evaluate_runs_an_onnx_export_through_the_same_predictor(run, tmp_path: Path) -> None:
    result, data = run
    exported = imgclf.export_model(result.artifact, tmp_path / "model.onnx").path
    common = {"manifest": result.run_dir / "manifest.csv", "split": "test"}
    by_torch = imgclf.evaluate(result.artifact, data, out=tmp_path / "torch", **common)
    by_onnx = imgclf.evaluate(exported, data, out=tmp_path / "onnx", **common)
    rows = {
        name: list(csv.DictReader((tmp_path / name / "predictions.csv").open())) for name in ("torch", "onnx")
    }
    assert [r["predicted"] for r in rows["onnx"]] == [r["predicted"] for r in rows["torch"]]
    np.testing.assert_allclose(
        [float(r["confidence"]) for r in rows["onnx"]],
        [float(r["confidence"]) for r in rows["torch"]],
        atol=1e-5,
    )
    assert by_onnx.accuracy == by_torch.accuracy and by_onnx.metrics["count"] == 36


def test_evaluate_cli_prints_the_table_and_most_confused(run, tmp_path: Path) -> None:
    result, data = run
    output = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(result.artifact),
            str(data),
            "--manifest",
            str(result.run_dir / "manifest.csv"),
            "--split",
            "test",
            "--out",
            str(tmp_path / "cli-eval"),
        ],
        env={"COLUMNS": "160"},
    )
    assert output.exit_code == 0, output.output
    assert "precision" in output.output and "macro avg" in output.output and "ECE" in output.output
    assert "most confused" in output.output or "accuracy 1.0000" in output.output


def test_metric_functions_on_known_values() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 1, 2])
    assert top_k_accuracy(probabilities, labels, 1) == 0.5
    assert top_k_accuracy(probabilities, labels, 2) == 0.75
    metrics = compute_metrics(probabilities, labels, ["a", "b", "c"])
    assert metrics["per_class"]["b"]["recall"] == 0.5 and metrics["per_class"]["c"]["recall"] == 0.0
    assert metrics["most_confused"][0][2] == 1
    perfect = expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert perfect["ece"] == pytest.approx(0.0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda classes: st.tuples(
            st.just(classes),
            st.lists(st.tuples(*[st.integers(0, classes - 1)] * 2), min_size=1, max_size=60),
        )
    )
)
def test_the_per_class_report_is_scikit_learns(case: tuple[int, list[tuple[int, int]]]) -> None:
    """Precision, recall and F1 per class and averaged, computed without scikit-learn, equal its
    classification_report with zero_division=0 on any answers: classes never predicted, never
    present, or a single class."""
    from sklearn.metrics import classification_report

    classes, pairs = case
    labels, predicted = (np.array(column) for column in zip(*pairs))
    names = [f"c{index}" for index in range(classes)]
    probabilities = np.eye(classes)[predicted] * 0.9 + 0.1 / classes
    metrics = compute_metrics(probabilities, labels, names)
    expected = classification_report(
        labels, predicted, labels=list(range(classes)), target_names=names, output_dict=True, zero_division=0
    )
    for name in names:
        got, want = metrics["per_class"][name], expected[name]
        assert got["support"] == want["support"]
        for key, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert got[key] == pytest.approx(want[theirs], abs=1e-12), (name, key)
    for ours, theirs in (("macro", "macro avg"), ("weighted", "weighted avg")):
        for key, their_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert metrics[ours][key] == pytest.approx(expected[theirs][their_key], abs=1e-12), (ours, key)


@pytest.mark.parametrize("count", [2, 120])
def test_confusion_matrix_adapts_to_the_number_of_classes(count: int) -> None:
    matrix = np.random.default_rng(0).integers(0, 20, (count, count))
    figure = confusion_figure(matrix, [f"class_{i}" for i in range(count)], normalize=True)
    assert isinstance(figure, Figure)
    width, _ = figure.get_size_inches()
    assert (width > 30) == (count > 60)
    labels = figure.axes[0].get_xticklabels()
    assert len(labels) == count and labels[0].get_fontsize() >= 4


def test_show_returns_a_figure_and_the_cli_writes_a_png(tmp_path: Path) -> None:
    data = write_class_folders(tmp_path / "data", ["a", "b", "c"], 5)
    figure = imgclf.show(data, per_class=4)
    assert isinstance(figure, Figure) and len(figure.axes) == 12
    result = CliRunner().invoke(
        app, ["show", str(data), "--per-class", "3", "--out", str(tmp_path / "g.png")]
    )
    assert result.exit_code == 0 and (tmp_path / "g.png").stat().st_size > 1000


def test_test_time_augmentation_averages_each_image_with_its_mirror_image(
    run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """predict and evaluate with --tta give the mean of the image's and the mirror image's
    probabilities, and say so; the model here was trained without --hflip, so a warning says that."""
    result, data = run
    plain = imgclf.load_model(result.artifact, backend="torch")
    with caplog.at_level("WARNING", logger="imgclf"):
        mirrored = imgclf.load_model(result.artifact, backend="torch", tta=True)
    assert "trained without --hflip" in caplog.text
    files = sorted((data / "stripes").glob("*.png"))[:6] + sorted((data / "square").glob("*.png"))[:6]
    arrays = np.stack([np.asarray(Image.open(f)) for f in files])[..., None]
    expected = (plain.predict_arrays(arrays) + plain.predict_arrays(arrays[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(mirrored.predict_arrays(arrays), expected, atol=1e-6)
    assert not np.allclose(plain.predict_arrays(arrays), expected, atol=1e-3)  # the flip changes something

    evaluation = imgclf.evaluate(
        result.artifact, data, manifest=result.run_dir / "manifest.csv", split="test", out=tmp_path / "tta",
        tta=True,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert metrics["tta"] is True and evaluation.metrics["tta"] is True
    rows = list(csv.DictReader((tmp_path / "tta" / "predictions.csv").open()))
    by_path = {r["path"]: r for r in rows}
    first = next(iter(by_path))
    array = np.asarray(Image.open(data / first))[None, ..., None]
    probabilities = mirrored.predict_arrays(array)[0]
    assert float(by_path[first]["confidence"]) == pytest.approx(probabilities.max(), abs=1e-5)


def test_a_run_reports_the_metrics_its_saved_model_gives(tmp_path: Path) -> None:
    """Training may run (and validate each epoch) under bf16 autocast; the saved model predicts in
    float32, and the run's final metrics are computed the same way, so evaluate agrees with them."""
    data = write_class_folders(tmp_path / "data", ["square", "disc", "cross", "stripes"], 20)
    result = imgclf.train(
        data, model="cnn-small", epochs=1, batch_size=16, seed=1, precision="bf16",
        project=str(tmp_path / "runs"),
    )  # fmt: skip
    again = imgclf.evaluate(
        result.artifact, data, manifest=result.run_dir / "manifest.csv", split="val", out=tmp_path / "eval"
    )
    assert again.metrics["loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-5)
    assert again.metrics["accuracy"] == result.metrics["val_acc"]


def test_temperature_scaling_is_fitted_stored_and_applied(run) -> None:
    from imgclf.evaluation.calibration import ece, fit_temperature
    from imgclf.inference.predictor import with_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 5))
    truth = np.array([rng.choice(5, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # T = 3 undoes it
    fitted = fit_temperature(overconfident, truth)
    assert fitted == pytest.approx(3.0, rel=0.1)
    assert ece(with_temperature(overconfident, fitted), truth) < ece(overconfident, truth) / 3

    from imgclf.evaluation.calibration import choose_temperature

    temperature, report = choose_temperature(overconfident, truth, "val")
    assert temperature == pytest.approx(3.0, rel=0.1)  # it lowers the held-out ECE: applied
    assert report["held_out_ece_after"] < report["held_out_ece_before"] / 3
    calibrated = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # already calibrated: T ≈ 1
    few = rng.choice(len(truth), 60, replace=False)  # a small validation split: a fitted T is noise
    temperature, report = choose_temperature(calibrated[few], truth[few], "val")
    if temperature == 1.0:  # not applied: the line and imgclf.json say so, with the numbers
        assert "would not lower its held-out ECE" in report["note"]
        assert report["held_out_ece_after"] >= report["held_out_ece_before"]
    else:
        assert report["held_out_ece_after"] < report["held_out_ece_before"]
    right = np.eye(5)[truth] * 0.96 + 0.01  # every answer right and sure: T runs to its lower bound
    assert (
        choose_temperature(right, truth, "val")[1]["note"]
        == "the val split is answered too cleanly to fit a temperature"
    )
    wrong = np.eye(5)[(truth + 1) % 5] * 0.96 + 0.01  # every answer wrong and sure: to its upper bound
    temperature, report = choose_temperature(wrong, truth, "val")
    assert temperature == 1.0 and "so often confidently wrong that no temperature up to 20" in report["note"]
    declined = 0
    for seed in range(20):  # whatever the split: never applied where the held-out ECE rises
        draw = np.random.default_rng(seed).choice(len(truth), 40, replace=False)
        temperature, report = choose_temperature(calibrated[draw], truth[draw], "val")
        assert temperature == 1.0 or report["held_out_ece_after"] < report["held_out_ece_before"]
        declined += temperature == 1.0
    assert declined >= 5  # on answers already calibrated, a T fitted on 40 images is often noise

    result, data = run
    info = json.loads((result.artifact / "imgclf.json").read_text())
    calibration = info["calibration"]
    assert calibration["temperature"] > 0 and calibration["fitted_on"].endswith("val images")
    assert {"val_ece_before", "val_ece_after", "test_ece_before", "test_ece_after"} <= set(calibration)
    assert (
        calibration["held_out_ece_after"] < calibration["held_out_ece_before"]
        or calibration["temperature"] == 1
    )
    predictor = imgclf.load_model(result.artifact, backend="torch")
    assert predictor.temperature == calibration["temperature"]
    arrays = np.stack([np.asarray(Image.open(f)) for f in sorted((data / "disc").glob("*.png"))[:4]])[
        ..., None
    ]
    raw, _ = predictor._scores(arrays)
    np.testing.assert_allclose(
        predictor.predict_arrays(arrays), with_temperature(raw, predictor.temperature), atol=1e-6
    )
