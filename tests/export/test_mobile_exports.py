"""int8, ORT-format and TFLite exports: each checked before it is written, each carrying the model's
metadata, and each run by predict and evaluate like any other export."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import imgclf
from imgclf.cli import app
from imgclf.errors import ModelError
from imgclf.export import quantize
from imgclf.export.exporter import export_model
from imgclf.inference.predictor import Predictor

runner = CliRunner()


@pytest.fixture
def model_copy(shapes_model, tmp_path: Path) -> tuple[Path, Path]:
    """The session's model copied into this test's folder, with its run folder's manifest beside it."""
    artifact, data = shapes_model
    copy = tmp_path / "run" / "model"
    shutil.copytree(artifact, copy)
    shutil.copy(artifact.parent / "manifest.csv", copy.parent / "manifest.csv")
    return copy, data


def _metadata(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map


def test_int8_is_smaller_answers_as_the_float_model_and_runs_everywhere(model_copy, tmp_path: Path) -> None:
    artifact, data = model_copy
    result = export_model(artifact, quantize="int8")
    assert result.path == artifact / "model.int8.onnx" and not (artifact / "model.onnx").exists()
    check = result.quantization
    assert check is not None and check.passed and check.agreement >= quantize.MIN_AGREEMENT
    assert check.float_accuracy is not None and check.int8_accuracy >= check.float_accuracy - 0.01
    assert check.images == 15 and "15 val images" in check.source  # the run's validation split
    assert result.size_bytes * 2.5 < result.float_size_bytes
    metadata = _metadata(result.path)
    assert "int8 static quantization" in metadata["imgclf.quantization"]
    assert json.loads(metadata["imgclf.classes"]) == ["cross", "disc", "square"]
    files = sorted(str(p) for p in (data / "disc").iterdir())[:4]
    int8, exact = Predictor.from_path(result.path), Predictor.from_path(artifact, backend="torch")
    assert int8.backend == "onnxruntime" and int8.names == exact.names
    assert [p.label for p in int8.predict(files)] == [p.label for p in exact.predict(files)]
    evaluation = imgclf.evaluate(
        result.path, data, manifest=artifact.parent / "manifest.csv", out=tmp_path / "e"
    )
    assert evaluation.metrics["count"] > 0


def test_an_int8_model_that_disagrees_is_not_written(model_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact, _ = model_copy
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # no model can pass: the refusal path
    with pytest.raises(ModelError, match=r"top-1 agreement .* nothing was written\. Use --quantize none"):
        export_model(artifact, quantize="int8")
    assert not (artifact / "model.int8.onnx").exists()


def test_ort_format_loads_back_with_its_metadata_and_predicts(model_copy) -> None:
    artifact, data = model_copy
    for quantized in ("none", "int8"):
        result = export_model(artifact, format="ort", quantize=quantized)
        assert result.path.suffix == ".ort" and result.ort_max_abs_diff is not None
        assert result.ort_max_abs_diff <= 1e-4 or quantized == "int8"
        assert "imgclf.model" in _metadata(result.path)
        files = sorted(str(p) for p in (data / "square").iterdir())[:4]
        answers = Predictor.from_path(result.path).predict(files)
        assert [p.label for p in answers] == [p.label for p in Predictor.from_path(artifact).predict(files)]


def test_export_cli_reports_sizes_agreement_and_accuracy(model_copy) -> None:
    artifact, _ = model_copy
    result = runner.invoke(app, ["export", str(artifact), "--quantize", "int8", "--format", "ort"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (
        "int8:" in output
        and "smaller" in output
        and "top-1 agreement" in output
        and "accuracy float" in output
    )
    assert "ORT format loaded back" in output and (artifact / "model.int8.ort").is_file()
    refused = runner.invoke(app, ["export", str(artifact), "--format", "tflite", "--quantize", "int8"])
    assert refused.exit_code == 2 and "batch 1" in refused.output


@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="needs imgclf[tflite]")
def test_tflite_is_checked_in_the_litert_interpreter_and_carries_the_metadata(model_copy) -> None:
    from imgclf.export.formats.tflite import read_tflite_metadata

    artifact, _ = model_copy
    result = export_model(artifact, format="tflite")
    assert result.path == artifact / "model.tflite" and result.tflite_max_abs_diff <= 1e-4
    metadata = read_tflite_metadata(result.path.read_bytes())
    assert json.loads(metadata["imgclf.classes"]) == ["cross", "disc", "square"]


def test_tflite_without_its_packages_is_one_clear_error(model_copy) -> None:
    if importlib.util.find_spec("litert_torch") is not None:
        pytest.skip("imgclf[tflite] is installed here")
    artifact, _ = model_copy
    result = runner.invoke(app, ["export", str(artifact), "--format", "tflite"])
    assert result.exit_code == 2 and "pip install 'imgclf[tflite]'" in " ".join(result.output.split())
    assert not (artifact / "model.tflite").exists()
