"""One table per split, found by structure as split folders are: the tables' names, their shared
columns, their images (here: absolute paths from another machine, found by file name)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import imgclf
from conftest import write_class_folders
from imgclf.data.sources import data_edits, scan_source
from imgclf.errors import DataError

CLASSES = ["square", "disc", "cross"]


def _split_folders(root: Path) -> Path:
    """train/ val/ test/ class folders of distinct images (seeds differ)."""
    for split, count, seed in (("train", 30, 0), ("val", 10, 1), ("test", 10, 2)):
        write_class_folders(root / split, CLASSES, count, seed=seed)
    return root


def _split_tables(
    folders: Path, root: Path, names: dict[str, str], elsewhere: str = "/home/someone/data"
) -> Path:
    """The same images in one images/ folder, listed by one table per split with absolute paths from
    another machine (filename,label columns)."""
    (root / "images").mkdir(parents=True)
    for split, name in names.items():
        rows = ["filename,label"]
        for image in sorted((folders / split).rglob("*.png")):
            target = root / "images" / f"{split}-{image.name}"
            shutil.copy(image, target)
            rows.append(f"{elsewhere}/photos/{target.name},{image.parent.name}")
        (root / name).write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize(
    "names",
    [
        {"train": "train.csv", "val": "val.csv", "test": "test.csv"},
        {"train": "my_training.csv", "val": "my_validation.csv", "test": "my_test.csv"},
        {"train": "Training_set.csv", "val": "dev.csv", "test": "Testing_set.csv"},
    ],
    ids=["plain", "prefixed", "kaggle"],
)
def test_split_tables_are_read_as_their_splits(tmp_path: Path, names: dict[str, str], caplog) -> None:
    folders = _split_folders(tmp_path / "folders")
    tables = _split_tables(folders, tmp_path / "tables", names)
    (tables / "sample_submission.csv").write_text("filename,label\nx.png,square\n")
    with caplog.at_level(logging.INFO):
        image_set = scan_source(tables)
    by_folders = scan_source(folders)
    assert image_set.layout == "split-tables" and image_set.classes == by_folders.classes
    counts = {split: image_set.splits.count(split) for split in ("train", "val", "test")}
    assert (
        counts
        == {split: by_folders.splits.count(split) for split in counts}
        == {"train": 90, "val": 30, "test": 30}
    )
    for split, name in names.items():
        assert f"{name} → {split} ({counts[split]})" in image_set.description
    assert "sample_submission.csv (not a split's table)" in caplog.text
    assert data_edits(tables) is None  # review --apply writes no split tables (yet): it says so


def test_the_path_and_label_flags_still_win_and_splits_none_reads_one_table(tmp_path: Path) -> None:
    folders = _split_folders(tmp_path / "folders")
    tables = _split_tables(folders, tmp_path / "tables", {"train": "train_list.csv", "val": "val_list.csv"})
    for table in ("train_list.csv", "val_list.csv"):  # another column first: the flags say which is which
        path = tables / table
        rows = path.read_text().splitlines()
        path.write_text(
            "\n".join([f"kind,where,{rows[0]}"] + [f"{r.split(',')[1]},x,{r}" for r in rows[1:]]) + "\n"
        )
    named = scan_source(
        tables, splits="train=train_list.csv,val=val_list.csv", path_col="filename", label_col="kind"
    )
    assert {named.splits.count("train"), named.splits.count("val")} == {90, 30}
    alone = scan_source(tables, splits="none", path_col="filename", label_col="kind")
    assert (
        alone.layout == "table" and alone.splits is None and len(alone) == 90
    )  # the training table alone: split later


def test_tables_whose_columns_disagree_are_one_clear_error_and_unlabelled_ones_are_left_out(
    tmp_path: Path, caplog
) -> None:
    folders = _split_folders(tmp_path / "folders")
    tables = _split_tables(
        folders, tmp_path / "tables", {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    )
    test = tables / "test.csv"
    rows = test.read_text().splitlines()
    test.write_text("\n".join(row.split(",")[0] for row in rows) + "\n")  # the path alone: no labels
    with caplog.at_level(logging.INFO):
        image_set = scan_source(tables)
    assert (
        image_set.splits.count("test") == 0
        and "test.csv (only the path column 'filename': no labels)" in caplog.text
    )
    val = tables / "val.csv"
    val.write_text(
        val.read_text().replace("filename,label", "FileName, Label ", 1)
    )  # case and spaces: the same
    assert scan_source(tables).splits.count("val") == 30
    val.write_text(val.read_text().replace("FileName, Label ", "filename,species", 1))
    with pytest.raises(DataError, match=r"val.csv lacks 'label', which train.csv has"):
        scan_source(tables)


def test_a_test_table_gives_test_accuracy_as_split_folders_do(tmp_path: Path) -> None:
    folders = _split_folders(tmp_path / "folders")
    tables = _split_tables(
        folders, tmp_path / "tables", {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    )
    settings = {"model": "cnn-small", "epochs": 4, "image_size": [24, 24], "project": str(tmp_path / "runs")}
    by_tables = imgclf.train(tables, **settings)
    by_folders = imgclf.train(folders, **settings)
    assert by_tables.metrics["test_count"] == by_folders.metrics["test_count"] == 30
    assert by_tables.metrics["val_count"] == by_folders.metrics["val_count"] == 30
    assert abs(by_tables.metrics["test_acc"] - by_folders.metrics["test_acc"]) <= 0.2
