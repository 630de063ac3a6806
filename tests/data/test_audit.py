"""`imgclf check` on a planted dataset: every planted problem is reported, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgclf.cli import app
from imgclf.data.audit import audit


def _blob_image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A distinct smooth colour picture (random low-frequency field), like a small photo."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """train/test images listed in a CSV, with one of each problem `check` must find."""
    rng = np.random.default_rng(42)
    root = tmp_path / "planted"
    rows = []

    def add(split: str, label: str, name: str, image: Image.Image | None = None, **save) -> Path:
        path = root / split / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if image is not None:
            image.save(path, **save)
        rows.append((f"{split}/{label}/{name}", label, split))
        return path

    for label in ("cat", "dog"):
        for index in range(12):
            add("train", label, f"{label}{index}.png", _blob_image(rng))
        for index in range(4):
            add("test", label, f"{label}{index}.png", _blob_image(rng))
    for index in range(2):  # a class with 2 images
        add("train", "owl", f"owl{index}.png", _blob_image(rng))
    # a file duplicated across train and test (byte for byte)
    source = root / "train" / "cat" / "cat0.png"
    add("test", "cat", "copy_of_cat0.png").write_bytes(source.read_bytes())

    def resized_copy(original: str, size: int, quality: int) -> tuple[Image.Image, dict]:
        return Image.open(root / "train" / original).resize((size, size)), {"quality": quality}

    # a resized JPEG re-encode of a train image, placed in test
    image, save = resized_copy("dog/dog1.png", 48, 85)
    add("test", "dog", "dog1_small.jpg", image, **save)
    # a byte copy of a cat filed as a dog (conflicting labels), and a resized re-encode of another cat
    add("train", "dog", "cat3_as_dog.png").write_bytes((root / "train" / "cat" / "cat3.png").read_bytes())
    image, save = resized_copy("cat/cat5.png", 56, 90)
    add("train", "cat", "cat5_small.jpg", image, **save)
    # a truncated JPEG
    good = add("train", "dog", "whole.jpg", _blob_image(rng), quality=90)
    data = good.read_bytes()
    add("train", "dog", "truncated.jpg").write_bytes(data[: len(data) // 2])
    rows = [r for r in rows if not r[0].endswith("whole.jpg")]
    good.unlink()
    # a CMYK JPEG, a 16-bit PNG, an EXIF-rotated photo
    add("train", "cat", "cmyk.jpg", _blob_image(rng).convert("CMYK"), quality=90)
    gray16 = np.asarray(_blob_image(rng).convert("L"), dtype=np.uint16) * 257
    add("train", "dog", "deep.png", Image.fromarray(gray16))
    rotated = _blob_image(rng)
    exif = rotated.getexif()
    exif[0x0112] = 6
    add("train", "cat", "rotated.jpg", rotated, exif=exif.tobytes(), quality=90)
    # a .txt file in a class folder, and a CSV row pointing to a missing file
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    rows.append(("train/cat/notes.txt", "cat", "train"))
    rows.append(("train/dog/gone.png", "dog", "train"))
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


EXPECTED = {
    "duplicate-across-splits": "error",
    "conflicting-labels": "error",
    "duplicate-within-split": "warning",
    "near-duplicate-across-splits": "warning",
    "near-duplicate-within-split": "warning",
    "corrupt": "error",
    "unusual-mode": "info",
    "exif-rotated": "info",
    "non-image": "warning",
    "missing-file": "error",
    "small-class": "warning",
}


def test_check_reports_every_planted_problem_and_no_other(planted: Path) -> None:
    report = audit(planted, workers=2)
    assert {f.kind: f.level for f in report.findings} == EXPECTED
    found = {f.kind: f.files for f in report.findings}
    (group,) = found["duplicate-across-splits"]
    assert sorted(e["path"] for e in group) == ["test/cat/copy_of_cat0.png", "train/cat/cat0.png"]
    (pair,) = found["near-duplicate-across-splits"]
    assert sorted(pair["paths"]) == ["test/dog/dog1_small.jpg", "train/dog/dog1.png"]
    (group,) = found["duplicate-within-split"]
    assert sorted(e["path"] for e in group) == ["train/cat/cat3.png", "train/dog/cat3_as_dog.png"]
    (conflict,) = found["conflicting-labels"]
    assert sorted(zip(conflict["paths"], conflict["labels"])) == [
        ("train/cat/cat3.png", "cat"),
        ("train/dog/cat3_as_dog.png", "dog"),
    ]
    (pair,) = found["near-duplicate-within-split"]
    assert sorted(pair["paths"]) == ["train/cat/cat5.png", "train/cat/cat5_small.jpg"]
    assert [f["path"] for f in found["corrupt"]] == ["train/dog/truncated.jpg"]
    assert sorted(f["mode"] for f in found["unusual-mode"]) == ["CMYK", "I;16"]
    assert found["exif-rotated"] == ["train/cat/rotated.jpg"]
    assert [f["path"] for f in found["non-image"]] == ["train/cat/notes.txt"]
    assert [f["path"] for f in found["missing-file"]] == ["train/dog/gone.png"]
    assert found["small-class"] == [{"class": "owl", "images": 2}]
    assert report.splits["test"]["images"] == 10 and report.has_errors


def test_check_cli_writes_json_and_strict_fails(planted: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "check.json"
    result = runner.invoke(app, ["check", str(planted), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "duplicate-across-splits" in result.output and "errors" in result.output
    assert "conflicting-labels" in result.output
    saved = json.loads(out.read_text())
    assert saved["errors"] == 4 and {f["kind"] for f in saved["findings"]} == set(EXPECTED)
    strict = runner.invoke(app, ["check", str(planted), "--strict"])
    assert strict.exit_code == 1


def test_clean_data_has_no_findings(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "clean" / split / label
            folder.mkdir(parents=True)
            for index in range(12 if split == "train" else 4):
                _blob_image(rng).save(folder / f"{index}.png")
    report = audit(tmp_path / "clean", workers=1)
    assert report.findings == [] and not report.has_errors
    assert report.sizes == {"64x64": 32} and report.modes == {"RGB": 32}
