"""Tables as Kaggle ships them: bare names or ids without an extension beside a folder of images,
found without flags and said in one line; and a clear account when nothing is found."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shape_image
from imgclf.data.sources import scan_source
from imgclf.errors import DataError


def kaggle_set(root: Path, folder: str = "train", rows: int = 12, extension: bool = True) -> Path:
    """`Training_set.csv` (filename,label: Image_1.jpg …) beside `folder/` holding the images flat."""
    rng = np.random.default_rng(0)
    images = root / folder
    images.mkdir(parents=True)
    names, labels = [], []
    for index in range(rows):
        label = index % 2
        shape_image(label, 24, rng, "RGB").save(images / f"Image_{index + 1}.jpg")
        names.append(f"Image_{index + 1}" + (".jpg" if extension else ""))
        labels.append(["sunrise", "rain"][label])
    (root / "test").mkdir()  # Kaggle's unlabelled test images, beside
    shape_image(0, 24, rng, "RGB").save(root / "test" / "Image_1.jpg")
    table = root / "Training_set.csv"
    pd.DataFrame({"filename": names, "label": labels}).to_csv(table, index=False)
    return table


@pytest.mark.parametrize("extension", [True, False], ids=["names", "ids without extension"])
def test_a_table_finds_its_images_in_a_sibling_folder(tmp_path: Path, extension: bool, caplog) -> None:
    table = kaggle_set(tmp_path, extension=extension)
    with caplog.at_level(logging.INFO, logger="imgclf.data.tables"):
        image_set = scan_source(table)
    assert len(image_set) == 12 and image_set.class_counts() == {"rain": 6, "sunrise": 6}
    assert not image_set.problems
    assert Path(image_set.location(0)).parent == tmp_path / "train"  # not the unlabelled test/
    assert "images in train/" in image_set.description
    assert ("ids matched as ID.jpg" in image_set.description) is (not extension)
    assert any("images found in train/" in r.message for r in caplog.records)
    assert image_set.reader.open(image_set.keys[0]).size == (24, 24)


def test_images_option_names_the_folder_and_rows_it_misses_are_counted(tmp_path: Path, caplog) -> None:
    table = kaggle_set(tmp_path / "set", folder="pictures_2023")
    elsewhere = tmp_path / "set" / "pictures_2023"
    (elsewhere / "Image_3.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="imgclf.data.tables"):
        image_set = scan_source(table, images=elsewhere)
    assert len(image_set) == 11
    assert [p.path for p in image_set.problems] == ["Image_3.jpg"]
    assert "not found in " in image_set.problems[0].reason
    assert any(
        "1 of its 12 rows name no file" in r.message and "--images" in r.message for r in caplog.records
    )


def test_paths_written_on_another_machine_are_matched_by_file_name(tmp_path: Path) -> None:
    table = kaggle_set(tmp_path)
    frame = pd.read_csv(table)
    frame["filename"] = "/kaggle/input/weather/train/" + frame["filename"]
    frame.to_csv(table, index=False)
    image_set = scan_source(table)
    assert len(image_set) == 12 and "by file name" in image_set.description


def test_a_table_whose_images_are_nowhere_says_where_it_looked(tmp_path: Path) -> None:
    table = kaggle_set(tmp_path)
    for image in (tmp_path / "train").iterdir():
        image.rename(image.with_suffix(".bak"))
    with pytest.raises(DataError) as raised:
        scan_source(table)
    message = str(raised.value)
    assert "none of the 12 rows of Training_set.csv names an image found" in message
    assert "beside it, train/, test/" in message and "--images DIR" in message
    assert "\n" not in message


def test_train_and_check_give_the_same_account_of_a_table_without_images(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    table = kaggle_set(tmp_path)
    for image in (tmp_path / "train").iterdir():
        image.unlink()
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(table), "--project", str(tmp_path / "runs")])
    checked = runner.invoke(app, ["check", str(table)])
    for result in (trained, checked):
        assert result.exit_code != 0
        assert "none of the 12 rows of Training_set.csv" in result.output and "--images" in result.output


MULTI_FORMS = {
    "spaces": lambda sets: [" ".join(s) for s in sets],
    "pipes": lambda sets: ["|".join(s) for s in sets],
    "semicolons": lambda sets: [";".join(s) for s in sets],
    "quoted commas": lambda sets: [",".join(s) for s in sets],
}
LABEL_SETS = [["rain"], ["rain", "fog"], ["sunrise"], [], ["fog"], ["sunrise", "fog", "rain"]] * 3


@pytest.mark.parametrize("form", [*MULTI_FORMS, "0/1 columns"])
def test_a_multi_label_table_is_found_and_refused_with_its_summary(tmp_path: Path, form: str) -> None:
    table = kaggle_set(tmp_path, rows=len(LABEL_SETS))
    frame = pd.read_csv(table)
    if form == "0/1 columns":
        frame = frame.drop(columns="label")
        for name in ("fog", "rain", "sunrise"):
            frame[name] = [int(name in s) for s in LABEL_SETS]
    else:
        frame["label"] = MULTI_FORMS[form](LABEL_SETS)
    frame.to_csv(table, index=False)
    with pytest.raises(DataError) as raised:
        scan_source(table)
    message = str(raised.value)
    assert "Training_set.csv is multi-label" in message and "--single-label" in message
    assert "3 labels (fog 9, rain 9, sunrise 6)" in message
    assert "labels per image: mean 1.33, max 3; 3 images with none" in message
    if form != "0/1 columns":  # read as one class per distinct value when told so
        single = scan_source(table, multi_label=False)
        assert len(single.classes) == 5  # "rain fog" … as classes; the empty label is a missing row


def test_class_names_with_spaces_stay_single_label(tmp_path: Path) -> None:
    table = kaggle_set(tmp_path, rows=12)
    frame = pd.read_csv(table)
    frame["label"] = ["Bell Pepper", "Red Apple", "Apple", "Green Bean"] * 3
    frame.to_csv(table, index=False)
    image_set = scan_source(table)
    assert image_set.classes == ["Apple", "Bell Pepper", "Green Bean", "Red Apple"]
    with pytest.raises(DataError, match="is multi-label"):
        scan_source(table, multi_label=True)  # forced: read as label sets


def test_forcing_multi_label_on_a_table_without_label_sets_says_why(tmp_path: Path) -> None:
    table = kaggle_set(tmp_path)
    with pytest.raises(DataError, match="--multi-label: the label column 'label' joins no labels"):
        scan_source(table, multi_label=True)


def test_a_folder_as_kaggle_ships_it_reads_its_training_table(tmp_path: Path) -> None:
    """Training_set.csv and Testing_set.csv beside train/ and test/: the training table labels the
    images, and train/ and test/ are not taken for classes."""
    kaggle_set(tmp_path)
    pd.DataFrame({"filename": ["Image_1.jpg"]}).to_csv(tmp_path / "Testing_set.csv", index=False)
    image_set = scan_source(tmp_path)
    assert image_set.classes == ["rain", "sunrise"] and len(image_set) == 12
