"""The `unknown` answer: the threshold chosen for a precision, the likeness test, and every place that
answers (Predictor, evaluate, predict's CSV, exports, calibrate)."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import imgclf
from conftest import shape_image, write_class_folders
from imgclf.evaluation.calibration import ThresholdError, choose_threshold, coverage_precision
from imgclf.inference.unknown import BANK_FILE, UNKNOWN, UnknownRule


def _answers(confidence: list[float], correct: list[bool], classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose top class is 0 with the given confidence; labels right or wrong."""
    rows = []
    for value in confidence:
        rest = (1.0 - value) / (classes - 1)
        rows.append([value] + [rest] * (classes - 1))
    labels = np.asarray([0 if ok else 1 for ok in correct])
    return np.asarray(rows, dtype=np.float32), labels


def test_threshold_keeps_the_precision_asked_for_with_the_largest_coverage() -> None:
    confidence = [0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.45]
    correct = [True, True, True, True, False, True, True, False, False, True]
    probabilities, labels = _answers(confidence, correct)
    chosen = choose_threshold(probabilities, labels, 0.85)
    # precision by coverage: 1, 1, 1, 1, .8, .833, .857, .75, .667, .7 → the 7th answer is the last ≥ 0.85
    assert chosen["answered"] == 7 and chosen["coverage"] == pytest.approx(0.7)
    assert chosen["precision"] == pytest.approx(6 / 7)
    assert 0.6 < chosen["confidence"] < 0.7  # halfway between the last answer kept and the next
    rule = UnknownRule.from_calibration({"threshold": chosen})
    assert (~rule.mask(probabilities, None)).sum() == 7  # the rule reproduces the coverage reported
    assert choose_threshold(probabilities, labels, 1.0)["answered"] == 4
    assert choose_threshold(probabilities, labels, 0.0)["confidence"] < 0.45  # everything answered


def test_threshold_that_no_confidence_reaches_is_an_error() -> None:
    probabilities, labels = _answers([0.9, 0.8, 0.7], [False, True, True])
    with pytest.raises(ThresholdError, match=r"no confidence threshold reaches precision 0\.99"):
        choose_threshold(probabilities, labels, 0.99)


def test_likeness_thresholds_keep_98_percent_then_confidence_is_chosen_among_those_kept() -> None:
    rng = np.random.default_rng(0)
    probabilities, labels = _answers(list(rng.uniform(0.5, 1.0, 400)), list(rng.random(400) < 0.9))
    likeness = np.stack([rng.uniform(0.2, 0.9, 400), rng.uniform(1.0, 9.0, 400)], axis=1)
    chosen = choose_threshold(probabilities, labels, 0.9, likeness)
    alike = (likeness[:, 0] >= chosen["similarity"]) & (likeness[:, 1] <= chosen["distance"])
    assert alike.mean() == pytest.approx(0.98, abs=0.005)  # the two tests together keep 98%
    assert (likeness[:, 0] < chosen["similarity"]).sum() >= 1 and (
        likeness[:, 1] > chosen["distance"]
    ).sum() >= 1
    rule = UnknownRule.from_calibration({"threshold": chosen})
    answered = ~rule.mask(probabilities, likeness)
    assert answered.sum() == chosen["answered"]
    assert (probabilities.argmax(1) == labels)[answered].mean() >= 0.9
    assert rule.reason(0.99, (0.1, 2.0)).startswith("unlike the training images (similarity")
    assert rule.reason(0.99, (0.8, 99.0)).startswith("unlike the training images (distance")
    assert rule.reason(0.99, (0.8, 2.0)) is None
    _, coverage, precision = coverage_precision(probabilities.max(1), probabilities.argmax(1) == labels)
    assert coverage[-1] == 1.0 and len(precision) == 400


def mnist_digits(shared: Path, folder: Path, count: int = 60) -> list[Path]:
    """`count` MNIST test digits (all ten classes), read from the shared zip into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(shared / "mnist_png.zip") as handle:
        names = [n for n in handle.namelist() if n.startswith("mnist_png/test/") and n.endswith(".png")]
        paths = []
        for name in names[:: len(names) // count][:count]:
            path = folder / name.replace("/", "_")
            path.write_bytes(handle.read(name))
            paths.append(path)
    return paths


def test_a_model_trained_with_min_precision_answers_unknown_to_other_images(
    unknown_model: tuple[Path, Path], tmp_path: Path, shared_datasets: Path
) -> None:
    run_dir, _ = unknown_model
    info = json.loads((run_dir / "model" / "imgclf.json").read_text())
    chosen = info["calibration"]["threshold"]
    assert chosen["min_precision"] == 0.95 and chosen["precision"] >= 0.95
    assert (run_dir / "model" / BANK_FILE).is_file()
    predictor = imgclf.load_model(run_dir, backend="torch")

    digits = predictor.predict(mnist_digits(shared_datasets, tmp_path / "digits"))
    assert np.mean([p.is_unknown for p in digits]) >= 0.9  # another data set: mostly unknown
    assert all(p.label == UNKNOWN and p.labels[0] in predictor.classes for p in digits if p.is_unknown)
    rng = np.random.default_rng(7)
    stripes = predictor.predict([shape_image(3, 28, rng, "RGB") for _ in range(30)])  # a shape never seen
    assert np.mean([p.is_unknown for p in stripes]) >= 0.9
    noise = predictor.predict([rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(20)])
    assert all(p.is_unknown for p in noise)

    # new images of the trained classes are answered, as the validation coverage said
    fresh = [shape_image(label, 28, rng, "RGB") for label in (0, 1, 2) * 30]
    answered = [p for p in predictor.predict(fresh) if not p.is_unknown]
    assert len(answered) / len(fresh) >= chosen["coverage"] - 0.05
    truth = {0: "square", 1: "disc", 2: "cross"}
    right = [p.label == truth[i % 3] for i, p in enumerate(predictor.predict(fresh)) if not p.is_unknown]
    assert np.mean(right) >= 0.95
    assert len(answered) < len(fresh) or chosen["coverage"] == 1.0


def test_evaluate_reports_the_coverage_and_precision_calibration_measured(
    unknown_model: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, data = unknown_model
    chosen = json.loads((run_dir / "model" / "imgclf.json").read_text())["calibration"]["threshold"]
    evaluation = imgclf.evaluate(
        run_dir, data, split="val", manifest=run_dir / "manifest.csv", out=tmp_path / "eval", device="cpu"
    )
    unknown = evaluation.metrics["unknown"]
    assert unknown["coverage"] == pytest.approx(chosen["coverage"])
    assert unknown["precision"] == pytest.approx(chosen["precision"])
    assert unknown["confidence_threshold"] == pytest.approx(chosen["confidence"])
    assert len(evaluation.metrics["coverage_precision"]) == 20
    assert (tmp_path / "eval" / "coverage_precision.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    answered = sum(row["answer"] != UNKNOWN for row in rows)
    assert answered == unknown["answered"] and all(row["similarity"] and row["distance"] for row in rows)
    # the run folder's own evaluation and the report show it too
    assert json.loads((run_dir / "evaluation" / "metrics.json").read_text())["unknown"]["coverage"] == (
        pytest.approx(chosen["coverage"])
    )
    from imgclf.evaluation.report import write_report

    html = write_report(run_dir, tmp_path / "report.html").read_text()
    assert "Coverage and precision" in html and "unknown when confidence &lt;" in html


def test_exports_answer_unknown_as_pytorch_does(unknown_model: tuple[Path, Path], tmp_path: Path) -> None:
    import onnx

    from imgclf.export.exporter import export_model

    run_dir, _ = unknown_model
    model = tmp_path / "model"
    shutil.copytree(run_dir / "model", model)
    for fmt in ("onnx", "ort"):
        export_model(model, format=fmt)
    metadata = {p.key: p.value for p in onnx.load(model / "model.onnx").metadata_props}
    contract = json.loads(metadata["imgclf.unknown"])
    calibration = json.loads((model / "imgclf.json").read_text())["calibration"]["threshold"]
    assert contract["answer"] == UNKNOWN and contract["confidence"] == calibration["confidence"]
    outputs = [o.name for o in onnx.load(model / "model.onnx").graph.output]
    assert outputs == ["probabilities", "similarity", "distance"]

    rng = np.random.default_rng(3)
    images = [shape_image(label % 4, 28, rng, "RGB") for label in range(40)]  # a quarter unseen stripes
    expected = imgclf.load_model(model, backend="torch").predict(images)
    for name in ("model.onnx", "model.ort"):
        exported = imgclf.load_model(model / name).predict(images)
        assert [p.label for p in exported] == [p.label for p in expected]
        assert np.allclose([p.similarity for p in exported], [p.similarity for p in expected], atol=1e-4)
        assert np.allclose([p.distance for p in exported], [p.distance for p in expected], rtol=1e-4)
    assert sum(p.is_unknown for p in expected) >= 10


def test_calibrate_refits_an_existing_model_and_stale_exports_are_not_used(
    unknown_model: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from imgclf.export.exporter import export_model

    run_dir, _ = unknown_model
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    export_model(run / "model")
    report = imgclf.calibrate(run, min_precision=0.99, device="cpu")  # the run's data and manifest
    assert report["threshold"]["min_precision"] == 0.99 and report["threshold"]["precision"] >= 0.99
    assert json.loads((run / "model" / "imgclf.json").read_text())["calibration"] == report
    predictor = imgclf.load_model(run, device="cpu")
    assert predictor.backend == "torch" and "older calibration" in caplog.text  # export again
    assert predictor.unknown_rule.min_precision == 0.99

    report = imgclf.calibrate(run, device="cpu")  # no --min-precision: the model always answers
    assert "threshold" not in report and not (run / "model" / BANK_FILE).exists()
    assert imgclf.load_model(run, device="cpu", backend="torch").unknown_rule is None

    # new labelled images (no train split): the bank comes from the run's training split again
    fresh = write_class_folders(
        tmp_path / "fresh", ["square", "disc", "cross"], 20, size=28, mode="RGB", seed=5
    )
    report = imgclf.calibrate(run, fresh, split="all", min_precision=0.9, device="cpu")
    assert report["fitted_on"] == "60 all images" and report["threshold"]["images"] == 60
    assert (run / "model" / BANK_FILE).is_file()


def test_training_warns_when_no_threshold_reaches_the_precision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for name in ("a", "b"):  # the same pictures under both classes: a coin toss
        folder = data / name
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for index in range(60):
            shape_image(0, 24, rng).save(folder / f"{name}{index}.png")
    run = imgclf.train(
        data,
        model="mlp",
        epochs=1,
        min_precision=1.0,
        seed=0,
        project=str(tmp_path / "runs"),
    )
    assert "no confidence threshold reaches precision 1" in caplog.text
    info = json.loads((run.artifact / "imgclf.json").read_text())
    assert "threshold" not in info.get("calibration", {}) and not (run.artifact / BANK_FILE).exists()


def test_cli_predict_and_calibrate_say_unknown(unknown_model: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    run_dir, _ = unknown_model
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(11)
    shape_image(0, 28, rng, "RGB").save(images / "a_square.png")
    shape_image(3, 28, rng, "RGB").save(images / "b_stripes.png")  # a shape the model never saw
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(run_dir), str(images), "--backend", "torch"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0].rsplit("/", 1)[-1]: line for line in result.stdout.splitlines()}
    assert "answers unknown when confidence <" in result.output
    assert "unknown:" not in lines["a_square.png"] and " square " in lines["a_square.png"]
    assert "unknown: unlike the training images" in lines["b_stripes.png"]
    assert "best guess" in lines["b_stripes.png"]

    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(run_dir), str(images), "-o", str(out), "--backend", "torch"])
    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    assert rows["b_stripes.png"]["answer"] == UNKNOWN and rows["b_stripes.png"]["unknown"]
    assert rows["a_square.png"]["answer"] == "square" and rows["a_square.png"]["unknown"] == ""
    jsonl = tmp_path / "out.jsonl"
    runner.invoke(app, ["predict", str(run_dir), str(images / "b_stripes.png"), "-o", str(jsonl)])
    answer = json.loads(jsonl.read_text().splitlines()[0])
    assert answer["label"] == UNKNOWN and answer["predictions"][0]["label"] in ("square", "disc", "cross")

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    result = runner.invoke(app, ["calibrate", str(copy), "--min-precision", "0.9", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "on those images: coverage" in result.stdout and "(asked ≥ 0.9)" in result.stdout
    result = runner.invoke(app, ["calibrate", str(copy), "--min-precision", "1.5"])
    assert result.exit_code == 2 and "in [0, 1]" in result.output


def test_serve_answers_unknown(unknown_model: tuple[Path, Path]) -> None:
    import io

    from fastapi.testclient import TestClient

    from imgclf.serve import create_app

    run_dir, _ = unknown_model
    predictor = imgclf.load_model(run_dir, backend="torch")
    rng = np.random.default_rng(12)
    files = []
    for name, label in (("square.png", 0), ("stripes.png", 3)):
        buffer = io.BytesIO()
        shape_image(label, 28, rng, "RGB").save(buffer, format="PNG")
        files.append(("files", (name, buffer.getvalue(), "image/png")))
    with TestClient(create_app(predictor)) as client:
        answers = client.post("/predict", files=files).json()["predictions"]
        described = client.get("/model").json()
    assert answers[0]["label"] == "square" and answers[0]["unknown"] is None
    assert answers[1]["label"] == UNKNOWN and answers[1]["unknown"].startswith("unlike the training images")
    assert answers[1]["similarity"] is not None and answers[1]["distance"] is not None
    assert described["unknown"].startswith("confidence <")


def test_the_serve_page_shows_unknown_above_the_best_guesses(
    unknown_model: tuple[Path, Path], tmp_path: Path
) -> None:
    from conftest import CHROMIUM, CHROMIUM_FLAGS, served_at

    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (see .ci/run)")
    playwright = pytest.importorskip("playwright.sync_api")
    from imgclf.serve import create_app

    run_dir, _ = unknown_model
    predictor = imgclf.load_model(run_dir, backend="torch")
    image = tmp_path / "stripes.png"
    shape_image(3, 28, np.random.default_rng(13), "RGB").save(image)  # a shape the model never saw
    with served_at(create_app(predictor)) as port, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector(".result .label", timeout=20_000)
            note = page.locator(".result .unknown").text_content()
            guesses = page.locator(".result .row").count()
        finally:
            browser.close()
    assert note.startswith("unknown: unlike the training images") and note.endswith("Best guesses:")
    assert guesses == 3


def test_explain_says_when_the_model_answers_unknown(unknown_model: tuple[Path, Path]) -> None:
    from imgclf.inference.explain import Explainer

    run_dir, _ = unknown_model
    explainer = Explainer(imgclf.load_model(run_dir, backend="torch"))
    rng = np.random.default_rng(14)
    square, stripes = explainer.explain([shape_image(0, 28, rng, "RGB"), shape_image(3, 28, rng, "RGB")])
    assert square.unknown is None and square.label == "square"
    assert stripes.unknown.startswith("unlike the training images") and stripes.label in (
        "square",
        "disc",
        "cross",
    )


def test_features_are_taken_only_from_this_threads_forward_passes() -> None:
    """A server runs /predict and /explain through one network in different threads: a feature tap
    must not catch the other thread's pass."""
    import threading

    import torch

    from imgclf.inference.unknown import tap_features
    from imgclf.models import create_model

    model = create_model(
        {"name": "cnn-small", "num_classes": 3, "in_channels": 3, "image_size": [32, 32]}
    ).eval()
    with torch.no_grad(), tap_features(model) as captured:
        other = threading.Thread(target=lambda: model(torch.zeros(5, 3, 32, 32)))
        other.start()
        other.join()
        assert captured == []
        model(torch.zeros(2, 3, 32, 32))
    assert len(captured) == 1 and captured[0].shape[0] == 2
