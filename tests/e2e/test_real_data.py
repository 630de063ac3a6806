"""Real data from ../shared/datasets, read in place: an MNIST subset with an accuracy floor, and
`imgclf check` telling copies of digits from look-alike digits."""

from __future__ import annotations

import zipfile
from pathlib import Path

from PIL import Image

import imgclf
from imgclf.data.audit import audit


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


def test_check_tells_copies_from_look_alike_digits(shared_datasets: Path, tmp_path: Path) -> None:
    # two pairs of 1s by different writers whose 32×32 thumbnails correlate at 0.99
    look_alike = ["27111", "51603", "46213", "53823"]
    data = tmp_path / "digits"
    with zipfile.ZipFile(shared_datasets / "mnist_png.zip") as handle:
        for name in look_alike:
            (data / "1").mkdir(parents=True, exist_ok=True)
            (data / "1" / f"{name}.png").write_bytes(handle.read(f"mnist_png/train/1/{name}.png"))
        sevens = [n for n in handle.namelist() if n.startswith("mnist_png/train/7/")][:3]
        for name in sevens:
            (data / "7").mkdir(exist_ok=True)
            (data / "7" / Path(name).name).write_bytes(handle.read(name))
    # real copies: JPEG re-encodes of a 1, and of a 7 filed as a 1 (a label error)
    Image.open(data / "1" / "27111.png").save(data / "1" / "27111_copy.jpg", quality=90)
    seven = sorted((data / "7").glob("*.png"))[0]
    Image.open(seven).save(data / "1" / "seven_as_one.jpg", quality=75)
    report = audit(data, workers=1)
    found = {f.kind: f.files for f in report.findings}
    assert [sorted(pair["paths"]) for pair in found["near-duplicate-within-split"]] == [
        ["1/27111.png", "1/27111_copy.jpg"],
        sorted(["1/seven_as_one.jpg", f"7/{seven.name}"]),
    ]
    (conflict,) = found["conflicting-labels"]
    assert sorted(conflict["labels"]) == ["1", "7"] and conflict["copy"] == "look-alike"
