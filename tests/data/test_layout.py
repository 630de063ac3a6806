"""Split folders are found by structure and named by their words, whatever they are called."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import shape_image, write_class_folders
from imgclf.data.layout import find_layout, parse_splits_option, split_of_name
from imgclf.data.sources import scan_source
from imgclf.data.split import assign_splits
from imgclf.errors import DataError, UsageError

CLASSES = ["cats", "dogs"]


def _splits(root: Path, names: dict[str, int], classes: list[str] = CLASSES, wrap: bool = False) -> Path:
    """Split folders `name` holding `count` images per class (inside a same-named wrapper if `wrap`)."""
    for seed, (name, count) in enumerate(names.items()):
        folder = root / name / name if wrap else root / name
        write_class_folders(folder, classes, count, seed=seed)
    return root


def _zip(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, Path("dataset") / path.relative_to(folder))
    return target


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train", "train"),
        ("Training", "train"),
        ("training_set", "train"),
        ("TrainingSet", "train"),
        ("seg_train", "train"),
        ("train_data", "train"),
        ("trainset", "train"),
        ("trn", "train"),
        ("train2017", "train"),
        ("val", "val"),
        ("Validation", "val"),
        ("valid", "val"),
        ("dev", "val"),
        ("val_images", "val"),
        ("test", "test"),
        ("TEST_SET", "test"),
        ("seg_test", "test"),
        ("testing", "test"),
        ("eval", "test"),
        ("holdout", "test"),
        ("test_data", "test"),
        ("seg_pred", None),
        ("cats", None),
        ("train_test", None),  # two splits: no guess
        ("contest", None),
        ("trainer", None),
    ],
)
def test_split_names_map_by_their_words(name: str, split: str | None) -> None:
    assert split_of_name(name) == split


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"training_set": 6, "test_set": 3}, {"train": "training_set", "test": "test_set"}),
        ({"seg_train": 6, "seg_test": 3}, {"train": "seg_train", "test": "seg_test"}),
        (
            {"Train": 6, "Validation": 2, "Test": 3},
            {"train": "Train", "val": "Validation", "test": "Test"},
        ),
        ({"train_data": 6, "test_data": 3}, {"train": "train_data", "test": "test_data"}),
    ],
)
@pytest.mark.parametrize("wrap", [False, True])
def test_split_layouts_are_found_by_structure(
    tmp_path: Path, names: dict[str, int], expected: dict[str, str], wrap: bool
) -> None:
    root = _splits(tmp_path / "dataset", names, wrap=wrap)
    image_set = scan_source(root)
    assert image_set.layout == "split-folders"
    assert image_set.classes == CLASSES
    counts = {split: image_set.splits.count(split) for split in expected}
    assert counts == {split: names[folder] * 2 for split, folder in expected.items()}
    first = next(iter(expected.items()))
    assert image_set.description.startswith(f"split folders {first[1]} → {first[0]} ({counts[first[0]]:,})")
    assert all(key.startswith(f"{expected[split]}/") for key, split in zip(image_set.keys, image_set.splits))
    # the same layout inside a zip (under a wrapper folder, as archives often are)
    archived = scan_source(_zip(root, tmp_path / "data.zip"))
    assert archived.layout == "split-folders"
    assert sorted(zip(archived.keys, archived.splits)) == sorted(zip(image_set.keys, image_set.splits))


def test_unlabelled_folder_beside_the_splits_is_left_out_and_said(tmp_path: Path) -> None:
    root = _splits(tmp_path / "intel", {"seg_train": 5, "seg_test": 2}, wrap=True)
    unlabelled = root / "seg_pred" / "seg_pred"
    unlabelled.mkdir(parents=True)
    for index in range(3):
        shape_image(index % 4).save(unlabelled / f"{index}.png")
    image_set = scan_source(root)
    assert image_set.layout == "split-folders" and len(image_set) == 14
    assert "seg_pred (images without class folders (unlabelled?))" in image_set.description


def test_a_split_folder_with_an_unknown_name_is_one_clear_error(tmp_path: Path) -> None:
    root = _splits(tmp_path / "data", {"part_a": 6, "part_b": 3})
    with pytest.raises(DataError) as error:
        scan_source(root)
    message = str(error.value)
    assert "part_a, part_b" in message and "--splits train=part_a,val=part_b" in message
    root_named = _splits(tmp_path / "named", {"train": 4, "extras": 2})
    with pytest.raises(DataError, match=r"'extras' names no split .* --splits train=train,val=extras"):
        scan_source(root_named)
    assert "\n" not in message
    # the option settles it, either way
    given = scan_source(root, splits="train=part_a,test=part_b")
    assert given.layout == "split-folders"
    assert {split: given.splits.count(split) for split in ("train", "test")} == {"train": 12, "test": 6}
    assert "part_a → train (12), part_b → test (6)" in given.description
    as_classes = scan_source(root, splits="none")
    assert as_classes.layout == "class-folders" and as_classes.classes == ["part_a", "part_b"]


def test_two_folders_for_one_split_are_an_error(tmp_path: Path) -> None:
    root = _splits(tmp_path / "data", {"train": 4, "training_set": 4, "test": 2})
    with pytest.raises(DataError, match="look like the train split; choose with --splits train=train"):
        scan_source(root)


def test_splits_option_is_checked() -> None:
    assert parse_splits_option("auto") == "auto"
    assert parse_splits_option("none") == "none"
    assert parse_splits_option("train=a, validation=b") == {"train": "a", "val": "b"}
    for bad in ("train", "foo=a", "train=a,train=b", "train="):
        with pytest.raises(UsageError, match="--splits"):
            parse_splits_option(bad)
    with pytest.raises(UsageError, match="no such folder"):
        find_layout(Path("."), "train=not-here")


def test_classes_nested_one_level_deeper_get_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "animals"
    write_class_folders(root / "cats" / "train", ["x"], 3)
    write_class_folders(root / "cats" / "test", ["x"], 2)
    write_class_folders(root / "dogs", ["dogs", "puppies"], 3)  # dogs/dogs/ is a wrapper, no warning
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        image_set = scan_source(root)
    assert image_set.layout == "class-folders" and image_set.classes == CLASSES
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'cats' holds folders named like splits (test, train)" in warnings[0]
    # class folders that hold folders named like the other classes
    mixed = tmp_path / "mixed"
    write_class_folders(mixed / "a", ["b"], 2)
    write_class_folders(mixed / "b", ["x"], 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        scan_source(mixed)
    assert any("'a' holds folders named like classes (b)" in r.getMessage() for r in caplog.records)


def test_class_folders_with_same_named_sub_folders_stay_class_folders(tmp_path: Path) -> None:
    """data/cat/2024/*.png, data/dog/2024/*.png: one shared name is no split layout."""
    root = tmp_path / "data"
    write_class_folders(root / "cat", ["2024"], 3)
    write_class_folders(root / "dog", ["2024"], 3)
    image_set = scan_source(root)
    assert image_set.layout == "class-folders" and image_set.classes == ["cat", "dog"]
    assert image_set.description.startswith("class folders in data (6 images)")


def test_a_lone_train_folder_and_a_wrapper_folder(tmp_path: Path) -> None:
    root = _splits(tmp_path / "only", {"train": 3})
    image_set = scan_source(root)  # only/train/ is a wrapper: its class folders are the data
    assert image_set.layout == "class-folders" and image_set.classes == CLASSES
    assert image_set.description == "class folders in train (6 images)"
    (root / "test").mkdir()  # train/ beside a folder of unlabelled images: train is a split
    shape_image(0).save(root / "test" / "0001.png")
    image_set = scan_source(root)
    assert image_set.layout == "split-folders" and set(image_set.splits) == {"train"}
    assert image_set.description.endswith("left out: test (images without class folders (unlabelled?))")
    wrapped = tmp_path / "outer"
    write_class_folders(wrapped / "flowers", ["daisy", "rose"], 3)
    image_set = scan_source(wrapped)
    assert image_set.layout == "class-folders" and image_set.classes == ["daisy", "rose"]


def test_validation_is_carved_from_the_training_folder(tmp_path: Path) -> None:
    root = _splits(tmp_path / "dataset", {"training_set": 10, "test_set": 4})
    image_set = scan_source(root)
    splits = assign_splits(image_set, 0.2, 0.0, 0)
    keys = np.asarray(image_set.keys, dtype=object)
    assert all(k.startswith("training_set/") for k in keys[splits == "val"])
    assert all(k.startswith("test_set/") for k in keys[splits == "test"])
    assert (splits == "val").sum() == 4 and (splits == "test").sum() == 8


def test_check_evaluate_and_features_read_the_same_layout(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    runner = CliRunner()
    root = _splits(tmp_path / "dataset", {"training_set": 12, "test_set": 4}, wrap=True)
    archive = _zip(root, tmp_path / "dataset.zip")

    def run(*args: object) -> str:
        result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    found = "split folders training_set → train (24), test_set → test (8)"
    assert found in run("check", archive)
    trained = run("train", archive, "--model", "cnn-small", "--epochs", "1", "--project", tmp_path / "runs")
    assert f"layout {found}" in trained and "images train 20, val 4, test 8" in trained
    evaluated = run(
        "evaluate", tmp_path / "runs" / "train" / "model", root, "--split", "test", "--out", tmp_path / "e"
    )
    assert found in evaluated and "8 images (test)" in evaluated
    run("features", tmp_path / "runs" / "train" / "model", root, "--split", "train", "--out", tmp_path / "f")
    assert len(np.load(tmp_path / "f" / "labels.npy")) == 24
    # the folders can be named another way
    named = run("check", root, "--splits", "train=training_set,val=test_set")
    assert "training_set → train (24), test_set → val (8)" in named
