"""Tables as Kaggle ships them: bare names or ids without an extension beside a folder of images,
found without flags and said in one line; and a clear account when nothing is found."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shape_image
from imgclf.config import DataConfig
from imgclf.data.prepared import load_data
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


def multi_label_table(root: Path, form: str, sets: list[list[str]] = LABEL_SETS) -> Path:
    table = kaggle_set(root, rows=len(sets))
    frame = pd.read_csv(table)
    if form == "0/1 columns":
        frame = frame.drop(columns="label")
        for name in ("fog", "rain", "sunrise"):
            frame[name] = [int(name in s) for s in sets]
    else:
        frame["label"] = MULTI_FORMS[form](sets)
    frame.to_csv(table, index=False)
    return table


@pytest.mark.parametrize("form", [*MULTI_FORMS, "0/1 columns"])
def test_a_multi_label_table_is_found_with_its_summary_and_single_label_readers_refuse_it(
    tmp_path: Path, form: str
) -> None:
    table = multi_label_table(tmp_path, form)
    image_set = scan_source(table)
    assert image_set.multi_label and image_set.label_names == ["fog", "rain", "sunrise"]
    assert image_set.targets.sum(axis=0).tolist() == [9, 9, 6] and len(image_set) == 18
    summary = image_set.label_summary
    assert (
        summary.startswith("Training_set.csv is multi-label")
        and "3 labels (fog 9, rain 9, sunrise 6)" in summary
    )
    assert "labels per image: mean 1.33, max 3; 3 images with none" in summary
    assert "(none)" in image_set.classes  # an image may have no label: "none of these"
    with pytest.raises(DataError) as raised:
        load_data(table, DataConfig())
    assert "This takes one label per image" in str(raised.value) and "--single-label" in str(raised.value)
    assert load_data(table, DataConfig(), multi_label_ok=True).multi_label  # train and evaluate read it
    if form != "0/1 columns":  # read as one class per distinct value when told so
        single = load_data(table, DataConfig(multi_label=False))
        assert len(single.classes) == 5  # "rain fog" … as classes; the empty label is a missing row


def test_check_reports_on_multi_label_data(tmp_path: Path) -> None:
    """check on a multi-label table: its summary, labels too rare for a split, and the same image
    with two label sets."""
    from imgclf.data.audit import audit

    sets = [["rain"], ["rain", "fog"], ["fog"], [], ["rain"]] * 6 + [["sunrise"]]
    table = multi_label_table(tmp_path, "pipes", sets)
    frame = pd.read_csv(table)
    frame.loc[len(frame)] = [frame.loc[0, "filename"], "fog"]  # Image_1.jpg again, under another set
    frame.to_csv(table, index=False)
    report = audit(table)
    assert "multi-label" in report.label_summary and "3 labels" in report.label_summary
    assert report.splits["all"]["labels"] == {"fog": 13, "rain": 18, "sunrise": 1}  # the copy counts too
    small = report.finding("small-label")
    assert small is not None and small.files == [{"label": "sunrise", "images": 1}]
    missing = report.finding("label-missing-from-split")
    assert missing is not None and {(f["label"], f["split"]) for f in missing.files} == {("sunrise", "val")}
    assert report.finding("empty-class") is None and report.finding("small-class") is None
    conflict = report.finding("conflicting-labels")
    assert conflict is not None and "label sets" in conflict.message
    assert sorted(conflict.files[0]["labels"]) == ["fog", "rain"]


def test_iterative_split_keeps_every_label_in_every_split() -> None:
    from imgclf.data.split import iterative_split

    rng = np.random.default_rng(0)
    targets = (rng.random((3000, 6)) < [0.4, 0.3, 0.2, 0.05, 0.01, 0.003]).astype(np.uint8)
    splits = iterative_split(targets, {"val": 0.2, "test": 0.1}, seed=0)
    assert (splits == iterative_split(targets, {"val": 0.2, "test": 0.1}, seed=0)).all()  # seeded
    totals = targets.sum(axis=0)
    for name, share in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        held = targets[splits == name].sum(axis=0)
        assert (held > 0).all(), name  # the rarest label (9 images) too
        assert np.abs(held - share * totals).max() <= 1.0 + 0.02 * totals.max(), name
        assert abs((splits == name).mean() - share) < 0.01


def test_class_names_with_spaces_stay_single_label(tmp_path: Path) -> None:
    table = kaggle_set(tmp_path, rows=12)
    frame = pd.read_csv(table)
    frame["label"] = ["Bell Pepper", "Red Apple", "Apple", "Green Bean"] * 3
    frame.to_csv(table, index=False)
    image_set = scan_source(table)
    assert image_set.classes == ["Apple", "Bell Pepper", "Green Bean", "Red Apple"]
    assert scan_source(table, multi_label=True).multi_label  # forced: read as label sets


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


def test_images_split_over_two_folders_are_found_in_both(tmp_path: Path) -> None:
    """HAM10000 ships its images in two folders beside one table; a test/ folder that reuses the
    names of train/ for other images is never taken for a second part."""
    table = kaggle_set(tmp_path, folder="images_part_1", rows=12)
    second = tmp_path / "images_part_2"
    second.mkdir()
    for index in range(7, 13):  # half the images live in the second folder
        (tmp_path / "images_part_1" / f"Image_{index}.jpg").rename(second / f"Image_{index}.jpg")
    image_set = scan_source(table)
    assert len(image_set) == 12 and not image_set.problems
    assert "in images_part_1/ and images_part_2/" in image_set.description
    assert {Path(k).parts[0] for k in image_set.keys} == {"images_part_1", "images_part_2"}

    other = tmp_path / "weather"
    table = kaggle_set(other)
    for index in range(2, 6):  # Kaggle's test/ names its own images as train/ does
        shutil.copy(other / "test" / "Image_1.jpg", other / "test" / f"Image_{index}.jpg")
    for index in range(1, 5):  # four training images lost: test/ holds other images by those names
        (other / "train" / f"Image_{index}.jpg").unlink()
    image_set = scan_source(table)
    assert len(image_set) == 8 and len(image_set.problems) == 4
    assert "images in train/ (" in image_set.description


@pytest.mark.parametrize("form", ["space", "comma", "columns"])
def test_flower_mosaics_are_found_multi_label_in_each_form(
    tmp_path: Path, shared_datasets, form: str
) -> None:
    """Mosaics of real flowers5 photos, laid out as multi-label sets come: every form is found, with
    the true label sets, and check keeps every label in training and validation."""
    from conftest import write_flower_mosaics
    from imgclf.data.audit import audit

    table, targets, classes = write_flower_mosaics(tmp_path, 120, form)
    image_set = scan_source(table)
    assert image_set.multi_label and image_set.label_names == classes
    order = np.argsort([Path(k).name for k in image_set.keys])
    assert (image_set.targets[order] == targets).all()
    report = audit(image_set)
    assert report.finding("label-missing-from-split") is None
    assert report.splits["all"]["labels"] == dict(zip(classes, targets.sum(axis=0).tolist()))


def test_chest_x_ray_tables_are_read_without_flags(tmp_path: Path) -> None:
    """NIH ChestX-ray14's Data_Entry_2017.csv names its columns "Image Index" and "Finding Labels"
    (joined by |) beside patient columns, its images in images_001/images/, images_002/images/ …;
    CheXpert's train.csv has a 0/1 column per finding, with -1 for uncertain and blanks, beside
    Sex and Age: both are found without flags, and the -1 values are said."""
    rng = np.random.default_rng(3)
    findings = [["Effusion"], ["Effusion", "Mass"], [], ["Mass"], ["Nodule", "Mass"], ["Nodule"]] * 3
    nih = tmp_path / "nih"
    for index in range(len(findings)):
        folder = nih / f"images_00{1 + index % 2}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shape_image(index % 3, 32, rng, "L").save(folder / f"0000{index:04d}_000.png")
    pd.DataFrame(
        {
            "Image Index": [f"0000{index:04d}_000.png" for index in range(len(findings))],
            "Finding Labels": ["|".join(labels) or "No Finding" for labels in findings],
            "Follow-up #": 0,
            "Patient ID": rng.integers(1, 9, len(findings)),
            "Patient Gender": rng.choice(["M", "F"], len(findings)),
        }
    ).to_csv(nih / "Data_Entry_2017.csv", index=False)
    image_set = scan_source(nih / "Data_Entry_2017.csv")
    assert image_set.multi_label and len(image_set) == len(findings) and not image_set.problems
    assert image_set.label_names == ["Effusion", "Mass", "No Finding", "Nodule"]
    assert "path column 'Image Index'" in image_set.description
    assert "label column 'Finding Labels' joining labels with '|'" in image_set.label_summary
    assert "images_001/images/ and images_002/images/" in image_set.description

    chexpert = tmp_path / "chexpert"
    (chexpert / "train").mkdir(parents=True)
    frame = pd.DataFrame({"Path": [f"train/{i}.jpg" for i in range(12)], "Sex": "Female", "Age": 60})
    for column, values in {
        "Edema": ["1.0", "0.0", "", "-1.0"] * 3,
        "Effusion": ["", "1.0", "1.0", "0.0"] * 3,
        "Pneumonia": ["0.0", "", "-1.0", "1.0"] * 3,
    }.items():
        frame[column] = values
    for index in range(12):
        shape_image(index % 3, 32, rng, "L").save(chexpert / "train" / f"{index}.jpg")
    frame.to_csv(chexpert / "train.csv", index=False)
    image_set = scan_source(chexpert / "train.csv")
    assert image_set.multi_label and image_set.label_names == ["Edema", "Effusion", "Pneumonia"]
    assert image_set.targets.sum(axis=0).tolist() == [3, 6, 3]  # -1 is not a finding
    assert image_set.label_summary.endswith("6 values -1 (uncertain) read as absent")
