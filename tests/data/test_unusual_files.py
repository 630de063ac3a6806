"""Every file Pillow can write, in every mode, through every command: each one is used or listed with
its reason, and no command raises."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import imgclf
from conftest import unusual_image, write_unusual_images
from imgclf.cli import app
from imgclf.data.decode import decode_image, is_image, read_header, to_channels
from imgclf.data.preprocess import PreprocessSpec, load_prepared
from imgclf.serve import ServeSettings, create_app

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("unusual") / "data"
    return root, write_unusual_images(root)


def _relative(paths: list[Path], root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in paths}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_corpus_covers_the_formats_and_modes(corpus: tuple[Path, list[Path]]) -> None:
    _, files = corpus
    suffixes = {path.suffix for path in files}
    for expected in (".avif", ".heic", ".tga", ".jp2", ".ico", ".tif", ".webp", ".gif", ".bmp", ".pdf"):
        assert expected in suffixes
    names = {path.stem for path in files}
    assert {"LAB", "HSV", "I_16", "I_16B", "F", "CMYK", "YCbCr", "PA", "frames"} <= names
    assert len(files) > 150


def test_every_mode_converts_to_grey_and_colour() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    for mode in (
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
    ):
        image = unusual_image(mode, rng) if mode not in ("La", "RGBa", "RGBX") else Image.new(mode, (4, 4))
        assert to_channels(image, 1).mode == "L" and to_channels(image, 3).mode == "RGB"
    lab = Image.new("LAB", (2, 2), (255, 128, 128))  # CIELab white is sRGB white, not (255, 128, 128)
    assert min(to_channels(lab, 3).getpixel((0, 0))) >= 253
    red = Image.new("LAB", (2, 2), (137, 208, 195))  # L* 54, a* 80, b* 67: sRGB red
    assert (
        to_channels(red, 3).getpixel((0, 0))[0] > 200 and max(to_channels(red, 3).getpixel((0, 0))[1:]) < 40
    )


def test_images_by_extension_or_by_their_first_bytes(corpus: tuple[Path, list[Path]]) -> None:
    root, _ = corpus
    found = {path.name for path in root.rglob("*") if path.is_file() and is_image(path)}
    assert {"no_extension", "misnamed.png", "LAB.tif", "RGB.heic", "RGB.avif", "RGB.tga"} <= found
    assert not {"notes.txt", "RGB.pdf"} & found


def test_pillow_warnings_are_one_line_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "exif.jpg"
    image = Image.new("RGB", (8, 8))
    image.save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05broken")  # a damaged EXIF block
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        decode_image(path)
        read_header(path)
        load_prepared(str(path), PreprocessSpec(8, 8, 3, "stretch", "bilinear", [0, 0, 0], [1, 1, 1]))
    messages = [record.getMessage() for record in caplog.records]
    assert messages and all(message.startswith(f"{path}: ") for message in messages)
    assert all("\n" not in message for message in messages)


def test_check_train_evaluate_predict_and_serve_use_or_list_every_file(
    corpus: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, files = corpus
    everything = _relative(files, root)

    result = invoke("check", root, "--out", tmp_path / "check.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "check.json").read_text())
    listed = {
        item["path"]
        for finding in report["findings"]
        if finding["kind"] in ("corrupt", "non-image")
        for item in finding["files"]
    }
    assert report["splits"]["all"]["images"] + len(listed) == len(everything)
    assert {"a/notes.txt", "b/notes.txt"} & listed and {"a/empty.jpg", "b/empty.jpg"} & listed

    runs = tmp_path / "runs"
    result = invoke(
        "train",
        root,
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--project",
        runs,  # zero flags but the size
    )
    assert result.exit_code == 0, result.output
    run_dir = runs / "train"
    used = {row["path"] for row in _rows(run_dir / "manifest.csv")}
    skipped = {row["path"]: row["reason"] for row in _rows(run_dir / "skipped_files.csv")}
    assert used | set(skipped) == everything
    assert all(reason for reason in skipped.values())
    assert len(used) > 130  # the formats Pillow reads, in every mode they hold

    result = invoke("evaluate", run_dir / "model", root, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluated = {row["path"] for row in _rows(tmp_path / "eval" / "predictions.csv")}
    not_evaluated = {row["path"] for row in _rows(tmp_path / "eval" / "skipped_files.csv")}
    assert evaluated | not_evaluated == everything

    result = invoke("predict", run_dir / "model", root, "--output", tmp_path / "predictions.csv")
    assert result.exit_code == 1, result.output  # some files could not be read: exit 1, every file a row
    rows = _rows(tmp_path / "predictions.csv")
    readable = {row["path"] for row in rows if not row["error"]}
    # predict reads anyone's files: what cameras, phones and browsers make, every other format refused
    made_by_cameras = {path for path in evaluated if _upload_format(root / path)}
    assert {str(Path(path).relative_to(root)) for path in readable} >= made_by_cameras
    assert len(made_by_cameras) > 40
    refused = [row for row in rows if row["path"] not in readable]
    assert all(row["error"] for row in refused)
    assert any("only JPEG, PNG, WebP" in row["error"] or "not a JPEG, PNG" in row["error"] for row in refused)

    predictor = imgclf.load_model(run_dir / "model")
    with TestClient(create_app(predictor, ServeSettings())) as client:
        for path in files:
            answer = client.post("/predict", files={"files": (path.name, path.read_bytes())})
            assert answer.status_code in (200, 400, 415), (path, answer.text)
            if answer.status_code == 415:
                assert not _upload_format(path), path
            if answer.status_code in (400, 415):
                assert path.name in answer.json()["detail"]


def _upload_format(path: Path) -> bool:
    """Whether Pillow opens the file as one of the formats `serve` and `predict` accept."""
    from PIL import Image

    from imgclf.data.decode import UPLOAD_FORMATS

    try:
        with Image.open(path, formats=list(UPLOAD_FORMATS)):
            return True
    except Exception:
        return False
