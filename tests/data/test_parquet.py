"""Hugging Face image sets as Parquet shards: the `datasets` layouts, the class names from the
shards' metadata or the dataset card, the splits as named, rows named `<shard>#<row>` read by every
command, and the images decoded from the rows (never written out as files)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the Parquet tests need pyarrow (pip install 'imgclf[parquet]')")

import imgclf
from conftest import shape_image, write_parquet_shard
from imgclf.data.decode import read_bytes
from imgclf.data.sources import data_edits, scan_source
from imgclf.errors import DataError, UsageError
from imgclf.inference.inputs import iter_inputs

CLASSES = ["square", "disc", "cross"]
CARD = """---
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
          '0': square
          '1': disc
          '2': cross
---
# shapes
"""


def _rows(count: int, seed: int) -> tuple[list, list[int]]:
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(count)]
    return [shape_image(label, 24, rng) for label in labels], labels


def _hub_layout(root: Path, names: bool = True, train_shards: int = 2) -> Path:
    """data/train-0000k-of-0000n.parquet, data/validation-…, data/test-… as push_to_hub writes them."""
    for split, count, seed, shards in (
        ("train", 60, 0, train_shards),
        ("validation", 24, 1, 1),
        ("test", 24, 2, 1),
    ):
        images, labels = _rows(count, seed)
        for shard in range(shards):
            part = slice(shard * count // shards, (shard + 1) * count // shards)
            write_parquet_shard(
                root / "data" / f"{split}-{shard:05d}-of-{shards:05d}.parquet",
                images[part],
                labels[part],
                names=CLASSES if names else None,
                row_group_size=7,  # several row groups per shard: rows are read one group at a time
            )
    return root


def test_the_hub_layout_is_read_with_its_splits_and_class_names(tmp_path: Path) -> None:
    root = _hub_layout(tmp_path / "shapes")
    image_set = scan_source(root)
    assert image_set.layout == "parquet" and image_set.classes == CLASSES  # the ClassLabel's order
    assert {s: image_set.splits.count(s) for s in ("train", "val", "test")} == {
        "train": 60,
        "val": 24,
        "test": 24,
    }
    assert "data/train-*.parquet (2 shards) → train (60)" in image_set.description
    assert "data/validation-00000-of-00001.parquet → val (24)" in image_set.description
    assert "class names from the shards' metadata" in image_set.description
    assert image_set.keys[0] == "data/train-00000-of-00002.parquet#0"
    first = image_set.location(0)
    assert first.endswith(".parquet#0") and read_bytes(first).startswith(b"\x89PNG")
    assert data_edits(root) is None
    assert not list(root.rglob("*.png"))  # nothing written out as files


def test_class_names_come_from_the_dataset_card_in_the_converted_layout(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    for split, count, seed in (("train", 30, 0), ("test", 12, 1)):
        images, labels = _rows(count, seed)
        write_parquet_shard(root / "default" / split / "0000.parquet", images, labels)
    (root / "README.md").write_text(CARD)
    image_set = scan_source(root)
    assert image_set.classes == CLASSES and "the dataset card (README.md)" in image_set.description
    assert image_set.splits.count("test") == 12
    (root / "README.md").unlink()  # no names anywhere: the numbers are the classes, said in one line
    assert scan_source(root).classes == ["0", "1", "2"]


def test_string_labels_a_binary_column_and_the_column_flags(tmp_path: Path) -> None:
    images, labels = _rows(30, 0)
    shard = write_parquet_shard(
        tmp_path / "set" / "train.parquet",
        images,
        [CLASSES[i] for i in labels],
        binary=True,
        label_column="kind",
    )
    image_set = scan_source(shard)  # one file: one pool, split by imgclf later
    assert image_set.splits is None and sorted(image_set.classes) == sorted(CLASSES)
    assert image_set.class_counts() == {name: 10 for name in image_set.classes}
    assert len(scan_source(shard, label_col="KIND")) == 30
    with pytest.raises(DataError, match="--label-col 'species' is not a column"):
        scan_source(shard, label_col="species")
    with pytest.raises(DataError, match="--path-col 'kind' is not an image column"):
        scan_source(shard, path_col="kind")


def test_a_list_of_labels_per_row_is_a_multi_label_set(tmp_path: Path) -> None:
    images, labels = _rows(12, 0)
    sets = [[label] if i % 3 else [label, (label + 1) % 3] for i, label in enumerate(labels)]
    root = tmp_path / "tags"
    write_parquet_shard(
        root / "data" / "train-00000-of-00001.parquet", images, sets, names=CLASSES, label_column="labels"
    )
    image_set = scan_source(root)
    assert image_set.multi_label and image_set.label_names == CLASSES
    assert image_set.targets.sum() == 12 + 4
    assert "holding a list of labels per image" in image_set.label_summary


def test_unlabelled_rows_and_splits_unreadable_images_and_configurations(tmp_path: Path, caplog) -> None:
    root = _hub_layout(tmp_path / "shapes")
    images, labels = _rows(24, 2)
    write_parquet_shard(root / "data" / "test-00000-of-00001.parquet", images, [-1] * 24, names=CLASSES)
    images, labels = _rows(24, 1)
    labels[0] = -1  # one row without a label
    images[1] = images[1].resize((1, 1))
    write_parquet_shard(root / "data" / "validation-00000-of-00001.parquet", images, labels, names=CLASSES)
    with caplog.at_level(logging.INFO):
        image_set = scan_source(root)
    assert image_set.splits.count("test") == 0 and "no labels: a test set without answers" in caplog.text
    assert [p.path for p in image_set.problems] == ["data/validation-00000-of-00001.parquet#0"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = root / "data" / "train-00000-of-00002.parquet"
    table = pq.read_table(shard)
    cells = table.column("image").to_pylist()
    cells[3] = {"bytes": b"\xff\xd8\xff broken", "path": "x.jpg"}
    cells[4] = {"bytes": None, "path": "elsewhere.jpg"}
    table = table.set_column(0, "image", pa.array(cells, type=table.schema.field("image").type))
    pq.write_table(table, shard)
    report = imgclf.check(root).report
    corrupt = next(f for f in report.findings if f.kind == "corrupt")
    text = json.dumps(corrupt.files)
    assert "data/train-00000-of-00002.parquet#3" in text and "data/train-00000-of-00002.parquet#4" in text
    assert "no image bytes in this row" in text

    other = root / "other" / "train"
    images, labels = _rows(6, 3)
    write_parquet_shard(other / "0000.parquet", images, labels)
    with pytest.raises(UsageError, match=r"holds 2 configurations \(data, other\): give the folder of one"):
        scan_source(root)


def test_split_names_that_are_no_split_name_the_option(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    for split, seed in (("train", 0), ("extra", 1)):
        images, labels = _rows(12, seed)
        write_parquet_shard(root / "data" / f"{split}-00000-of-00001.parquet", images, labels, names=CLASSES)
    with pytest.raises(
        DataError, match=r"the split 'extra' is not train, val or test; name the splits with --splits"
    ):
        scan_source(root)
    named = scan_source(root, splits="train=train,val=extra")
    assert named.splits.count("val") == 12
    assert scan_source(root, splits="none").splits is None
    with pytest.raises(UsageError, match="no split 'dev'"):
        scan_source(root, splits="train=train,val=dev")


def test_a_folder_of_class_folders_with_a_stray_parquet_file_is_still_class_folders(tmp_path: Path) -> None:
    from conftest import write_class_folders

    root = write_class_folders(tmp_path / "shapes", CLASSES, 5)
    images, labels = _rows(3, 0)
    write_parquet_shard(root / "square" / "features.parquet", images, labels)
    assert scan_source(root).layout != "parquet"


def test_train_predict_evaluate_and_a_changed_shard(tmp_path: Path, monkeypatch) -> None:
    root = _hub_layout(tmp_path / "shapes")
    monkeypatch.chdir(tmp_path)
    result = imgclf.train(
        root, model="cnn-small", epochs=6, image_size=[24, 24], project=str(tmp_path / "runs")
    )
    assert result.metrics["val_count"] == 24 and result.metrics["test_count"] == 24
    assert result.metrics["test_acc"] >= 0.8
    test_shard = root / "data" / "test-00000-of-00001.parquet"
    rows = list(iter_inputs([test_shard]))
    assert rows[0] == f"{test_shard}#0" and len(rows) == 24
    predictions = list(imgclf.predict(result.artifact, rows, top_k=1))
    right = sum(p.labels[0] == CLASSES[i % 3] for i, p in enumerate(predictions))
    assert not any(p.error for p in predictions) and right / 24 >= 0.8
    assert len(list(iter_inputs([root]))) == 108  # a folder: every shard's rows
    report = imgclf.evaluate(result.artifact, root, out=tmp_path / "evaluation")
    assert report.metrics["count"] == 108 and report.accuracy >= 0.8

    before = read_bytes(rows[0])
    images, labels = _rows(24, 9)  # the shard is replaced: its rows are read again, not from the cache
    write_parquet_shard(test_shard, [image.rotate(90) for image in images], labels, names=CLASSES)
    os.utime(test_shard, ns=(1, 1))
    assert read_bytes(rows[0]) != before
    again = list(imgclf.predict(result.artifact, rows[:3], top_k=1))
    assert [p.error for p in again] == [None, None, None]


def test_without_pyarrow_the_error_names_the_extra(tmp_path: Path) -> None:
    root = _hub_layout(tmp_path / "shapes", train_shards=1)
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from imgclf.cli import main; sys.argv = ['imgclf', 'check', sys.argv[1]]; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "needs pyarrow: pip install 'imgclf[parquet]'" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_review_shows_the_rows_and_their_heatmaps(tmp_path: Path, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from imgclf.review.app import create_review_app
    from imgclf.review.session import open_review

    root = _hub_layout(tmp_path / "shapes", train_shards=1)
    monkeypatch.chdir(tmp_path)
    run = imgclf.train(root, model="cnn-small", epochs=3, image_size=[24, 24], project=str(tmp_path / "runs"))
    session = open_review(root, model=run.run_dir, review=tmp_path / "review.jsonl")
    assert session.items and all(".parquet#" in item.location for item in session.items)
    with TestClient(create_review_app(session)) as client:
        image = client.get("/api/image/0")
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
        heat = client.get("/api/heatmap/0")
        assert heat.status_code == 200 and heat.content.startswith(b"\x89PNG")
        assert client.post("/api/decide", json={"item": 0, "action": "exclude"}).status_code == 200
        refused = client.post("/api/apply")  # the rows are not files: the decisions stay in the log
        assert (
            refused.status_code == 400
            and "Parquet image set" in refused.text
            and "review.jsonl" in refused.text
        )


def test_shards_that_disagree_and_row_groups_over_the_budget(tmp_path: Path, monkeypatch) -> None:
    from imgclf.data import parquet
    from imgclf.data.decode import ImageDecodeError, decode_image

    root = _hub_layout(tmp_path / "shapes")
    images, labels = _rows(24, 1)
    write_parquet_shard(
        root / "data" / "validation-00000-of-00001.parquet",
        images,
        labels,
        names=CLASSES,
        label_column="kind",
    )
    with pytest.raises(DataError, match=r"validation-00000-of-00001\.parquet lacks the column 'label'"):
        scan_source(root)
    row = f"{root / 'data' / 'test-00000-of-00001.parquet'}#2"
    assert decode_image(row).size == (24, 24)
    monkeypatch.setattr(parquet, "ROW_GROUP_MAX_BYTES", 100)
    parquet._shards.clear()
    with pytest.raises(ImageDecodeError, match="over the limit of"):
        decode_image(row)
    with pytest.raises(OSError, match="has 24 rows, not row 99"):  # a file's error, and an image's
        monkeypatch.setattr(parquet, "ROW_GROUP_MAX_BYTES", 2**30)
        read_bytes(f"{root / 'data' / 'test-00000-of-00001.parquet'}#99")


def test_a_broken_shard_is_one_error_and_one_error_row(tmp_path: Path) -> None:
    broken = tmp_path / "set" / "train.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"PAR1" + os.urandom(200))
    with pytest.raises(DataError, match="cannot read"):
        scan_source(broken)
    rows = list(iter_inputs([broken]))
    assert rows == [f"{broken}#0"]
    with pytest.raises(OSError, match="cannot read"):
        read_bytes(rows[0])


def test_the_image_column_flag_and_rows_that_name_a_file_instead_of_holding_bytes(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, labels = _rows(9, 0)
    files = []
    for number, image in enumerate(images):
        files.append(tmp_path / f"photo_{number}.png")
        image.save(files[-1])
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    blank = read_bytes(str(files[0]))
    table = pa.table(
        {
            "mask": pa.array([{"bytes": blank, "path": None}] * 9, type=struct),  # the first image column
            "image": pa.array([{"bytes": None, "path": str(f)} for f in files], type=struct),
            "label": labels,
        }
    )
    shard = tmp_path / "set" / "data" / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(table, shard)
    by_default = scan_source(shard.parent.parent)
    assert read_bytes(by_default.location(4)) == blank  # the first image column
    chosen = scan_source(shard.parent.parent, path_col="image")
    assert read_bytes(chosen.location(4)) == files[4].read_bytes()  # its row names a file: that file
    assert "image column 'image'" in chosen.description


def test_a_crafted_path_only_row_never_reads_above_the_shards_folder(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "secret.png").write_bytes(read_bytes(str(write_png(tmp_path / "x.png"))))
    folder = tmp_path / "set"
    write_png(folder / "inside.png")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    paths = ["../secret.png", "inside.png", "sub/../../secret.png"]
    table = pa.table(
        {"image": pa.array([{"bytes": None, "path": p} for p in paths], type=struct), "label": [0, 1, 0]}
    )
    pq.write_table(table, folder / "train.parquet")
    rows = [f"{folder / 'train.parquet'}#{row}" for row in range(3)]
    assert read_bytes(rows[1]) == (folder / "inside.png").read_bytes()
    for row in (rows[0], rows[2]):
        with pytest.raises(OSError, match="leaves the shard's folder"):
            read_bytes(row)


def write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape_image(0, 12).save(path)
    return path
