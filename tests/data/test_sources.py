"""Every data source through the one scan path, with the problems real folders have."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shape_image, write_class_folders
from imgclf.data.headers import read_headers
from imgclf.data.imageset import from_arrays
from imgclf.data.label_map import load_label_map
from imgclf.data.sources import scan_source
from imgclf.data.split import apply_manifest, assign_splits, write_manifest
from imgclf.data.tables import scan_dataframe
from imgclf.errors import DataError, UsageError


def test_class_folders_nested_non_ascii_and_non_images(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["chat", "café"], 5)
    deep = root / "chat" / "2024" / "été"
    deep.mkdir(parents=True)
    shape_image(0).save(deep / "photo ünïcode.png")
    (root / "chat" / ".DS_Store").write_bytes(b"\0\0")
    (root / "café" / "notes.txt").write_text("not an image")
    (root / "café" / "Thumbs.db").write_bytes(b"\0")
    image_set = scan_source(root)
    assert image_set.layout == "class-folders"
    assert image_set.classes == ["café", "chat"]
    assert image_set.class_counts() == {"café": 5, "chat": 6}
    assert "chat/2024/été/photo ünïcode.png" in image_set.keys
    kinds = sorted(p.path for p in image_set.problems if p.kind == "non-image")
    assert kinds == ["café/Thumbs.db", "café/notes.txt", "chat/.DS_Store"]


def test_classes_flag_fixes_order_and_leaves_others_out(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b", "c"], 3)
    image_set = scan_source(root, classes=["c", "a"])
    assert image_set.classes == ["c", "a"]
    assert image_set.class_counts() == {"c": 3, "a": 3}
    with pytest.raises(DataError, match="'z'"):
        scan_source(root, classes=["a", "z"])


def test_natural_class_order(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["10", "2", "1"], 1)
    assert scan_source(root).classes == ["1", "2", "10"]


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_folders(tmp_path: Path, val_name: str) -> None:
    root = tmp_path / "data"
    write_class_folders(root / "train", ["a", "b"], 6)
    write_class_folders(root / val_name, ["a", "b"], 2, seed=1)
    write_class_folders(root / "test", ["a", "b"], 3, seed=2)
    image_set = scan_source(root)
    assert image_set.layout == "split-folders"
    splits = assign_splits(image_set, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert {s: int((splits == s).sum()) for s in ("train", "val", "test")} == {
        "train": 12,
        "val": 4,
        "test": 6,
    }


def test_train_and_test_folders_carve_validation_from_train(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_class_folders(root / "train", ["a", "b"], 10)
    write_class_folders(root / "test", ["a", "b"], 4, seed=2)
    image_set = scan_source(root)
    splits = assign_splits(image_set, val_fraction=0.2, test_fraction=0.0, seed=0)
    test_keys = {k for k, s in zip(image_set.keys, splits) if s == "test"}
    val_keys = {k for k, s in zip(image_set.keys, splits) if s == "val"}
    assert all(k.startswith("test/") for k in test_keys) and len(test_keys) == 8
    assert all(k.startswith("train/") for k in val_keys) and len(val_keys) == 4  # 2 per class


def test_csv_relative_paths_missing_files_and_split_column(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "images", ["x", "y"], 4)
    rows = [(f"images/{p.parent.name}/{p.name}", p.parent.name) for p in sorted(root.rglob("*.png"))]
    rows.append(("images/x/missing.png", "x"))
    frame = pd.DataFrame(rows, columns=["filepath", "category"])
    frame["split"] = ["train", "test"] * 4 + ["train"]
    table = tmp_path / "labels.csv"
    frame.to_csv(table, index=False)
    image_set = scan_source(table)
    assert image_set.layout == "table" and len(image_set) == 8
    assert image_set.splits.count("test") == 4
    assert [p.kind for p in image_set.problems] == ["missing"]
    # columns named in no way imgclf knows, as TSV: the path column is the one of image file names,
    # the label column the one other column, and the description names both
    frame.rename(columns={"filepath": "img_file", "category": "kind"}).to_csv(
        tmp_path / "labels.tsv", sep="\t", index=False
    )
    found = scan_source(tmp_path / "labels.tsv")
    assert len(found) == 8 and "path column 'img_file'" in found.description
    assert found.class_counts() == {"x": 4, "y": 4}
    ids = frame.assign(filepath=frame["filepath"].str.removesuffix(".png"))  # no extension: not told apart
    ids.rename(columns={"filepath": "ref", "category": "kind"}).to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(DataError, match="--path-col"):
        scan_source(tmp_path / "ids.csv")
    named = scan_source(tmp_path / "labels.tsv", path_col="img_file", label_col="kind")
    assert len(named) == 8
    with pytest.raises(DataError, match="not found"):
        scan_source(tmp_path / "labels.tsv", path_col="nope", label_col="kind")


def test_dataframe_through_the_api(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "images", ["x", "y"], 3)
    frame = pd.DataFrame({"path": [str(p) for p in sorted(root.rglob("*.png"))]})
    frame["label"] = [Path(p).parent.name for p in frame["path"]]
    image_set = scan_dataframe(frame)
    assert image_set.class_counts() == {"x": 3, "y": 3}


def _zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, Path("wrapped") / path.relative_to(folder))
    return target


def test_zip_is_unpacked_once_into_the_cache(tmp_path: Path, isolated_cache: Path) -> None:
    root = tmp_path / "data"
    write_class_folders(root / "train", ["a", "b"], 4)
    write_class_folders(root / "test", ["a", "b"], 2, seed=3)
    archive = _zip_folder(root, tmp_path / "data.zip")
    first = scan_source(archive)
    assert first.layout == "split-folders" and len(first) == 12
    unpacked = list((isolated_cache / "archives").iterdir())
    assert len(unpacked) == 1
    marker = unpacked[0] / ".imgclf-complete"
    stamp = marker.stat().st_mtime_ns
    second = scan_source(archive)
    assert second.keys == first.keys
    assert marker.stat().st_mtime_ns == stamp  # not unpacked again
    assert Path(first.reader.location(first.keys[0])).is_file()


def test_tar_gz_with_a_csv(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "pack" / "img", ["p", "q"], 3)
    rows = [(f"img/{p.parent.name}/{p.name}", p.parent.name) for p in sorted(root.rglob("*.png"))]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "pack" / "labels.csv", index=False)
    archive = tmp_path / "pack.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "pack", arcname="pack")
    image_set = scan_source(archive)
    assert image_set.layout == "table"
    assert image_set.class_counts() == {"p": 3, "q": 3}


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", rng.integers(0, 255, (30, 28, 28)), compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", np.arange(30) % 3, compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", rng.integers(0, 255, (9, 28, 28)), compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", np.arange(9) % 3, compress)
    image_set = scan_source(tmp_path)
    assert image_set.layout == "idx" and len(image_set) == 39
    assert image_set.classes == ["0", "1", "2"]
    assert image_set.splits.count("test") == 9
    image = image_set.reader.open(image_set.keys[0])
    assert image.size == (28, 28) and image.mode == "L"
    (tmp_path / f"t10k-labels-idx1-ubyte{ext}").unlink()
    with pytest.raises(DataError, match="no labels file"):
        scan_source(tmp_path)


def test_arrays_with_integer_or_named_labels() -> None:
    images = np.random.default_rng(0).integers(0, 255, (12, 10, 10, 3), dtype=np.uint8)
    image_set = from_arrays(images, np.arange(12) % 3, class_names=["cat", "dog", "owl"])
    assert image_set.classes == ["cat", "dog", "owl"]
    assert image_set.reader.open(image_set.keys[5]).mode == "RGB"
    named = from_arrays(images[..., 0], ["b", "a"] * 6)
    assert named.classes == ["a", "b"] and named.reader.open(named.keys[0]).mode == "L"
    with pytest.raises(DataError):
        from_arrays(images, [0, 1])


def test_headers_find_unreadable_files(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 3)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    image_set = read_headers(scan_source(root))
    assert len(image_set) == 6
    assert [(p.path, p.kind) for p in image_set.problems] == [("a/broken.png", "corrupt")]


def test_missing_source_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        scan_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        scan_source(tmp_path / "empty")


def test_label_map_by_name_or_one_based_index(tmp_path: Path) -> None:
    by_name = tmp_path / "names.json"
    by_name.write_text(json.dumps({"daisy": "Common daisy"}))
    assert load_label_map(by_name, ["daisy", "rose"]) == {"daisy": "Common daisy", "rose": "rose"}
    by_index = tmp_path / "index.json"
    by_index.write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}))
    assert load_label_map(by_index, ["a", "b"]) == {"a": "pink primrose", "b": "hard-leaved pocket orchid"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zebra": "x"}))
    with pytest.raises(UsageError):
        load_label_map(bad, ["a", "b"])


def test_manifest_round_trip(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 10)
    image_set = scan_source(root)
    splits = assign_splits(image_set, 0.3, 0.2, seed=7)
    write_manifest(tmp_path / "manifest.csv", image_set, splits)
    (root / "a" / "a_000.png").unlink()  # data changed since: the rest keeps its split
    again, again_splits = apply_manifest(scan_source(root), tmp_path / "manifest.csv")
    expected = {k: s for k, s in zip(image_set.keys, splits) if k != "a/a_000.png"}
    assert dict(zip(again.keys, again_splits)) == expected


def test_stratified_split_is_seeded_and_proportional(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    image_set = from_arrays(np.zeros((100, 4, 4), np.uint8), labels)
    first = assign_splits(image_set, 0.2, 0.1, seed=1)
    assert (first == assign_splits(image_set, 0.2, 0.1, seed=1)).all()
    assert not (first == assign_splits(image_set, 0.2, 0.1, seed=2)).all()
    for label, count in zip(range(3), (50, 30, 20)):
        members = first[labels == label]
        assert (members == "val").sum() == round(0.2 * count)
        assert (members == "test").sum() == round(0.1 * count)
    # a class with a single image stays in training
    tiny = from_arrays(np.zeros((11, 4, 4), np.uint8), [0] * 10 + [1])
    assert assign_splits(tiny, 0.2, 0.0, seed=0)[-1] == "train"


def test_jpeg_photos_are_not_mistaken_for_grayscale(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), (200, 30, 30), np.uint8)).save(buffer, format="JPEG")
            (root / name / f"{index}.jpg").write_bytes(buffer.getvalue())
    headers = read_headers(scan_source(root)).headers
    assert not any(h.grayscale for h in headers)
    assert os.path.exists(root)
