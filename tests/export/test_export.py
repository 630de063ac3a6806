"""ONNX export: the graph follows its documented input contract, carries its metadata, and matches PyTorch."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import imgclf
from conftest import write_class_folders
from imgclf.artifact import ModelInfo, load_artifact, save_artifact
from imgclf.cli import app
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import UsageError
from imgclf.export.exporter import export_model
from imgclf.inference.predictor import Predictor
from imgclf.models import create_model

runner = CliRunner()


@pytest.fixture
def trained(shapes_model):
    """A small CNN trained on RGB shapes, with display names, and its data (shared by the session)."""
    return shapes_model


def contract_input(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The export's documented input, computed by hand: RGB, resized, pixels / 255, N×C×H×W float32."""
    image = Image.open(path).convert("RGB").resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]


def test_the_graph_answers_the_calibrated_probabilities_predict_answers(trained, tmp_path: Path) -> None:
    """A model with a fitted temperature: the graph's `probabilities` are softmax(logits / T), what
    `imgclf predict` answers (the unknown rule's confidence is set on them), and predict on the export
    applies T once, not again; an export from before (no imgclf.temperature) still gets T from
    Predictor."""
    artifact, data = trained
    copy = tmp_path / "model"
    shutil.copytree(artifact, copy)
    meta = json.loads((copy / "imgclf.json").read_text())
    meta["calibration"] = {**(meta.get("calibration") or {}), "temperature": 2.5}
    (copy / "imgclf.json").write_text(json.dumps(meta))
    files = sorted(str(p) for p in data.rglob("*.png"))[::9]
    torch_answers = Predictor.from_path(copy, backend="torch").predict(files, top_k=3)
    out = tmp_path / "calibrated.onnx"
    export_model(copy, out)
    proto = onnx.load(str(out))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert float(metadata["imgclf.temperature"]) == 2.5
    onnx_answers = Predictor.from_path(out).predict(files, top_k=3)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    spec = Predictor.from_path(out).spec
    for path, a, b in zip(files, torch_answers, onnx_answers):
        assert a.labels == b.labels and np.allclose(a.probabilities, b.probabilities, atol=1e-4)
        raw = session.run(None, {"image": contract_input(Path(path), spec)})[0][0]
        assert np.allclose(sorted(raw, reverse=True)[:3], a.probabilities, atol=1e-4)  # the graph's own
    del proto.metadata_props[:]  # an older export's graph: uncalibrated, and no imgclf.temperature
    for key, value in metadata.items():
        if key != "imgclf.temperature":
            proto.metadata_props.add(key=key, value=value)
    older = tmp_path / "older.onnx"
    onnx.save(proto, str(older))
    assert Predictor.from_path(older).temperature == 2.5
    assert Predictor.from_path(out).temperature == 1.0


def test_export_writes_a_model_that_follows_the_documented_contract(trained, tmp_path: Path) -> None:
    artifact, data = trained
    out = tmp_path / "classifier.onnx"
    result = imgclf.export_model(artifact, out)  # the public API name of export_model
    assert out.is_file() and result.max_abs_diff < 1e-4 and result.check_images == 16
    assert "training images" in result.check_source

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(metadata["imgclf.classes"]) == [
        "cross",
        "disc",
        "square",
    ]
    assert json.loads(metadata["imgclf.display_names"]) == ["Cross", "Disc", "Square"]
    embedded = json.loads(metadata["imgclf.model"])  # the training machine's folders stay there
    assert str(data.parent) not in metadata["imgclf.model"]
    assert embedded["dataset"]["source"] == data.name
    assert embedded["training"]["config"]["output"]["project"] == "runs"
    spec = PreprocessSpec.from_dict(json.loads(metadata["imgclf.preprocessing"]))
    assert (spec.height, spec.width, spec.channels) == (32, 32, 3)
    assert spec.mean == pytest.approx([0.485, 0.456, 0.406])

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    files = sorted((data / "disc").iterdir())[:3] + sorted((data / "cross").iterdir())[:2]
    batch = np.concatenate([contract_input(path, spec) for path in files])
    probabilities = session.run(None, {"image": batch})[0]
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)

    model, info = load_artifact(artifact)
    mean = torch.tensor(info.preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.preprocessing.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model((torch.from_numpy(batch) - mean) / std), 1).numpy()
    assert np.abs(probabilities - expected).max() < 1e-4


def test_predict_uses_onnxruntime_when_a_current_export_is_present(trained, tmp_path: Path) -> None:
    artifact, data = trained
    copy = tmp_path / "model"
    shutil.copytree(artifact, copy)
    files = sorted(str(p) for p in (data / "square").iterdir())[:6]
    assert Predictor.from_path(copy).backend == "torch"
    with pytest.raises(UsageError, match="imgclf export"):
        Predictor.from_path(copy, backend="onnxruntime")

    export_model(copy)
    fast = Predictor.from_path(copy)
    exact = Predictor.from_path(copy, backend="torch")
    assert (fast.backend, exact.backend) == ("onnxruntime", "torch")
    assert fast.names == ["Cross", "Disc", "Square"]
    for a, b in zip(fast.predict(files, top_k=3), exact.predict(files, top_k=3)):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    from_file = Predictor.from_path(copy / "model.onnx").predict(files[0])[0]
    assert from_file.label == exact.predict(files[0])[0].label


def test_stale_export_is_not_used(trained, tmp_path: Path) -> None:
    artifact, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(artifact, copy)
    export_model(copy)
    onnx_bytes = (copy / "model.onnx").read_bytes()
    model, info = load_artifact(copy)
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    save_artifact(copy, model, info)  # replaces the folder: the export is gone
    (copy / "model.onnx").write_bytes(onnx_bytes)  # an old export put back by hand
    assert Predictor.from_path(copy).backend == "torch"
    with pytest.raises(UsageError):
        Predictor.from_path(copy, backend="onnxruntime")


def test_fixed_batch_export_predicts_any_number_of_images(trained, tmp_path: Path) -> None:
    artifact, data = trained
    out = tmp_path / "fixed.onnx"
    export_model(artifact, out, dynamic_batch=False, batch_size=4)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 4
    files = sorted(str(p) for p in (data / "disc").iterdir())[:7]
    fixed = Predictor.from_path(out).predict(files)
    exact = Predictor.from_path(artifact, backend="torch").predict(files)
    assert len(fixed) == 7 and [p.label for p in fixed] == [p.label for p in exact]


def test_pretrained_backbone_exports_within_tolerance(tmp_path: Path) -> None:
    """A timm EfficientNet-Lite0 (depthwise convs, BN, ReLU6) exports and matches PyTorch."""
    architecture = {"name": "efficientnet_lite0", "num_classes": 5, "in_channels": 3, "image_size": [96, 96]}
    model = create_model(architecture)
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    spec = PreprocessSpec(96, 96, 3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    info = ModelInfo(architecture=architecture, classes=list("abcde"), preprocessing=spec)
    save_artifact(tmp_path / "lite0", model, info)
    images = tmp_path / "images"
    write_class_folders(images, ["a", "b"], 4, size=120, mode="RGB", suffix=".jpg")
    result = export_model(tmp_path / "lite0", check_images=[str(images)])
    assert result.check_source == "the given images" and result.check_images == 8
    assert result.max_abs_diff < 1e-4 and result.top1_agreement == 1.0


def test_export_cli_prints_the_check_and_refuses_bad_options(trained, tmp_path: Path) -> None:
    artifact, data = trained
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(artifact), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "max |Δp| =" in result.output and "limit 1e-04" in result.output
    predicted = runner.invoke(app, ["predict", str(out), str(data / "cross"), "-k", "1"])
    assert predicted.exit_code == 0 and "Cross" in predicted.output
    torch_on_onnx = runner.invoke(app, ["predict", str(out), str(data), "--backend", "torch"])
    assert torch_on_onnx.exit_code == 2 and "ONNX Runtime" in torch_on_onnx.output
    old_opset = runner.invoke(
        app, ["export", str(artifact), "--opset", "13", "--out", str(tmp_path / "x.onnx")]
    )
    assert old_opset.exit_code == 2 and not (tmp_path / "x.onnx").exists()
    not_onnx = runner.invoke(app, ["export", str(artifact), "--out", str(tmp_path / "model.pt")])
    assert not_onnx.exit_code == 2
    missing = runner.invoke(app, ["export", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not found" in missing.output


NEW_FORMAT = '''
    """The ONNX graph with its metadata stripped to the classes (a format in one file)."""

    from __future__ import annotations

    SUFFIX = ".slim"
    RUNTIME = "onnxruntime"


    def check_options(quantize, dynamic_batch):
        from imgclf.errors import UsageError

        if quantize != "none":
            raise UsageError("--format slim is float only")


    def write(job, result):
        import onnx

        proto = onnx.load_from_string(job.payload)
        kept = [entry for entry in proto.metadata_props if entry.key in ("imgclf.classes", "imgclf.model")]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        result.kind = "slim ONNX"
        result.check_lines.append(f"slim: {len(kept)} metadata entries kept")
        return proto.SerializeToString()
'''


def test_a_new_export_format_is_one_file(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The format's file alone: export_model finds it by name, writes its suffix, and Predictor runs
    its files with ONNX Runtime because the format says so."""
    import imgclf.export.formats as formats_package
    from imgclf.export.formats import FORMATS

    artifact, data = trained
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "slim.py").write_text(textwrap.dedent(NEW_FORMAT))
    monkeypatch.setattr(formats_package, "__path__", [*formats_package.__path__, str(folder)])
    assert FORMATS.names() == ["onnx", "ort", "tflite", "slim", "web"]
    with pytest.raises(UsageError, match="float only"):
        export_model(artifact, tmp_path / "m.slim", format="slim", quantize="int8")
    with pytest.raises(UsageError, match=r"--out must end in \.slim"):
        export_model(artifact, tmp_path / "m.onnx", format="slim")
    result = export_model(artifact, tmp_path / "m.slim", format="slim")
    assert (result.kind, result.check_lines) == ("slim ONNX", ["slim: 2 metadata entries kept"])
    files = sorted(str(p) for p in (data / "disc").iterdir())[:4]
    slim = Predictor.from_path(tmp_path / "m.slim")
    exact = Predictor.from_path(artifact, backend="torch")
    assert slim.backend == "onnxruntime"
    for a, b in zip(slim.predict(files, top_k=3), exact.predict(files, top_k=3)):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
