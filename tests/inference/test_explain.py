"""Grad-CAM: the heatmap looks where the class is decided, for the builtin CNNs and timm backbones."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import imgclf
from imgclf.cli import app
from imgclf.inference.explain import Explainer, Explanation
from imgclf.inference.predictor import Predictor
from imgclf.models import create_model

SIZE, MARK = 48, 10


def mark_image(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey noise with one small square at a random place: white or black decides the class."""
    pixels = rng.integers(60, 190, (SIZE, SIZE)).astype(np.uint8)
    top, left = (int(v) for v in rng.integers(0, SIZE - MARK, 2))
    pixels[top : top + MARK, left : left + MARK] = 255 if kind == "white" else 0
    return pixels, (top, left)


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A model trained on mark images, and where each image's mark is."""
    root = tmp_path_factory.mktemp("marks")
    rng = np.random.default_rng(7)
    where = {}
    for kind in ("white", "black"):
        (root / "data" / kind).mkdir(parents=True)
        for index in range(150):
            pixels, corner = mark_image(kind, rng)
            path = root / "data" / kind / f"{kind}_{index:03d}.png"
            Image.fromarray(pixels, "L").save(path)
            where[f"{kind}/{path.name}"] = corner
    run = imgclf.train(
        root / "data",
        model="cnn",
        epochs=10,
        batch_size=16,
        val_split=0.25,
        seed=0,
        project=str(root / "runs"),
        augment="none",
    )
    assert run.metrics["val_acc"] >= 0.95
    return run.run_dir, where


def test_the_heatmap_peak_falls_inside_the_mark(marks) -> None:
    run_dir, where = marks
    explainer = Explainer(Predictor.from_path(run_dir / "model", backend="torch"))
    with (run_dir / "manifest.csv").open() as handle:
        validation = [row["path"] for row in csv.DictReader(handle) if row["split"] == "val"]
    data = Path(run_dir).parent.parent / "data"
    hits = 0
    for explanation in explainer.explain([str(data / key) for key in validation]):
        assert isinstance(explanation, Explanation) and explanation.heatmap.shape == (SIZE, SIZE)
        key = "/".join(Path(explanation.source).parts[-2:])
        top, left = where[key]
        row, column = explanation.peak
        hits += top <= row < top + MARK and left <= column < left + MARK
    fitted, explainer.predictor.temperature = explainer.predictor.temperature, 3.0  # Predictor's answers
    first = next(iter(explainer.explain([str(data / validation[0])])))
    answer = explainer.predictor.predict(str(data / validation[0]))[0]
    assert first.label == answer.label and first.probability == pytest.approx(answer.probability, abs=1e-5)
    explainer.predictor.temperature = fitted
    rate = hits / len(validation)
    print(f"heatmap peak inside the mark: {hits}/{len(validation)} = {rate:.3f}")
    assert len(validation) == 76 and rate >= 0.9


def test_explain_cli_writes_heatmaps_and_a_table(marks, tmp_path: Path) -> None:
    run_dir, _ = marks
    images = sorted((Path(run_dir).parent.parent / "data" / "black").iterdir())[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(
        app,
        [
            "explain",
            str(run_dir),
            *map(str, images),
            str(broken),
            "--out",
            str(tmp_path / "x"),
            "--class",
            "white",
        ],
    )
    assert result.exit_code == 1, result.output  # one unreadable file: reported, the rest written
    rows = list(csv.DictReader((tmp_path / "x" / "explanations.csv").open()))
    assert [row["class"] for row in rows[:3]] == ["white"] * 3 and rows[3]["error"]
    picture = Image.open(tmp_path / "x" / f"{images[0].stem}.gradcam.png")
    assert picture.size == (2 * SIZE * 5, SIZE * 5)  # the image and its heatmap, enlarged
    unknown = CliRunner().invoke(app, ["explain", str(run_dir), str(images[0]), "--class", "circle"])
    assert unknown.exit_code == 2 and "circle" in unknown.output


def test_a_timm_backbone_is_explained_at_its_last_feature_maps() -> None:
    from imgclf.inference.explain import grad_cam
    from imgclf.models.anatomy import feature_map_layer as target_layer

    model = create_model(
        {"name": "efficientnet_lite0", "num_classes": 3, "in_channels": 3, "image_size": [64, 64]}
    ).eval()
    layer = target_layer(model, 3, 64, 64)
    name = next(name for name, module in model.named_modules() if module is layer)
    assert name.startswith("bn2")  # after conv_head: the last feature maps
    import torch

    heatmaps, probabilities = grad_cam(model, layer, torch.rand(2, 3, 64, 64))
    assert heatmaps.shape == (2, 64, 64) and probabilities.shape == (2, 3)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
