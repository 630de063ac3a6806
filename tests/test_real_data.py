"""Real data from ../shared/datasets, read in place: an MNIST subset with an accuracy floor."""

from __future__ import annotations

import zipfile
from pathlib import Path

import imgclf


def _extract_subset(archive: Path, target: Path, per_class: dict[str, int]) -> Path:
    """Copy the first N images per class of each split out of the zip (the zip itself stays in place)."""
    taken: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(archive) as handle:
        for name in handle.namelist():
            parts = name.split("/")
            if len(parts) != 4 or not parts[3].endswith(".png") or parts[1] not in per_class:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= per_class[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            destination = target / parts[1] / parts[2] / parts[3]
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(handle.read(name))
    return target


def test_mnist_subset_reaches_the_accuracy_floor(shared_datasets: Path, tmp_path: Path) -> None:
    data = _extract_subset(shared_datasets / "mnist_png.zip", tmp_path / "mnist", {"train": 500, "test": 100})
    run = imgclf.train(
        data, model="cnn-basic", epochs=5, val_split=0.1, seed=0, project=str(tmp_path / "runs")
    )
    assert run.metrics["test_count"] == 1000
    assert run.metrics["test_acc"] >= 0.96, run.metrics
    predictor = imgclf.load_model(run.artifact)
    sevens = sorted((data / "test" / "7").glob("*.png"))[:20]
    predicted = [p.label for p in predictor.predict(sevens)]
    assert predicted.count("7") >= 17
