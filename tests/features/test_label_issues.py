"""Likely wrong labels: confident learning on out-of-sample probabilities finds flipped labels."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_class_folders
from imgclf.cli import app
from imgclf.features.label_issues import (
    confident_learning,
    neighbour_probabilities,
    out_of_sample_probabilities,
)


def test_confident_learning_finds_the_flipped_labels_of_separable_features() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 16))
    truth = rng.integers(0, 3, 600)
    features = (centres[truth] + rng.normal(0, 1, (600, 16))).astype(np.float32)
    labels = truth.copy()
    flipped = rng.choice(600, 30, replace=False)
    labels[flipped] = (truth[flipped] + rng.integers(1, 3, 30)) % 3
    probabilities = out_of_sample_probabilities(features, labels, 3)
    found = confident_learning(probabilities, labels)
    listed = [index for index, _, _ in found]
    hits = len(set(listed) & set(flipped.tolist()))
    assert hits / len(flipped) >= 0.9 and hits / len(listed) >= 0.8  # recall and precision
    for index, suggested, quality in found:
        if index in set(flipped.tolist()):
            assert suggested == truth[index]
        assert quality == probabilities[index, labels[index]]
    assert [q for _, _, q in found] == sorted(q for _, _, q in found)  # most likely wrong first


def test_neighbour_probabilities_vote_without_the_sample_itself() -> None:
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(5, 1, (50, 8)), rng.normal(-5, 1, (50, 8))]).astype(np.float32)
    labels = np.repeat([0, 1], 50)
    labels[7] = 1  # one sample of the first cluster filed under the second class
    for chunk in (16, 1024):  # chunks cut through the data or hold all of it: the same answers
        probabilities = neighbour_probabilities(features, labels, 2, neighbours=10, chunk=chunk)
        assert np.allclose(probabilities.sum(1), 1.0)
        assert probabilities[7].argmax() == 0  # its neighbours are of the first class: not its own vote
        assert (probabilities[np.arange(100) != 7].argmax(1) == labels[np.arange(100) != 7]).all()


def test_check_labels_writes_the_table_and_the_gallery(tmp_path: Path) -> None:
    data = write_class_folders(tmp_path / "data", ["square", "disc", "cross"], 24, size=32, mode="RGB")
    moved = sorted((data / "disc").iterdir())[:2]
    for path in moved:  # two discs filed as squares
        shutil.move(path, data / "square" / f"moved_{path.name}")
    out = tmp_path / "issues"
    result = CliRunner().invoke(app, ["check", str(data), "--labels", "--labels-out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    assert list(rows[0]) == ["path", "given", "suggested", "score"]
    assert {f"square/moved_{path.name}" for path in moved} <= {row["path"] for row in rows}
    assert all(row["suggested"] != row["given"] for row in rows)
    assert (out / "label_issues.png").is_file() and "likely wrong labels" in result.output


def test_the_label_check_does_not_load_the_training_loop() -> None:
    import subprocess
    import sys

    code = (
        "import sys, imgclf.features.label_issues, imgclf.features.bottleneck; "
        "print(sorted(m for m in sys.modules if m.startswith('imgclf.training')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_multi_label_confident_learning_finds_missing_and_extra_labels() -> None:
    from imgclf.features.label_issues import multi_label_confident_learning, out_of_sample_label_probabilities

    rng = np.random.default_rng(2)
    directions = rng.normal(0, 3, (4, 24))
    truth = rng.random((800, 4)) < 0.35  # label sets, some of them empty
    features = (truth.astype(float) @ directions + rng.normal(0, 1, (800, 24))).astype(np.float32)
    given = truth.copy()
    changed = rng.choice(800, 30, replace=False)
    labels = rng.integers(0, 4, 30)
    given[changed, labels] = ~given[changed, labels]  # a label dropped (missing) or added (extra)
    probabilities = out_of_sample_label_probabilities(features, given.astype(np.float32))
    assert probabilities.shape == given.shape and ((probabilities >= 0) & (probabilities <= 1)).all()
    found = multi_label_confident_learning(probabilities, given)
    pairs = {(index, label) for index, label, _, _ in found}
    wrong = set(zip(changed.tolist(), labels.tolist()))
    assert len(pairs & wrong) / len(wrong) >= 0.9 and len(pairs & wrong) / len(pairs) >= 0.7
    for index, label, present, quality in found:
        assert present == given[index, label]  # extra: in the given set; missing: not in it
        assert quality == (probabilities[index, label] if present else 1 - probabilities[index, label])
        assert quality < 0.5
    assert [q for *_, q in found] == sorted(q for *_, q in found)  # most likely wrong first


def test_check_labels_on_a_multi_label_table_lists_missing_and_extra_labels(tmp_path: Path) -> None:
    from conftest import SHARED_DATASETS, write_flower_mosaics

    if not (SHARED_DATASETS / "flowers5.zip").is_file():
        pytest.skip(f"flowers5.zip not found in {SHARED_DATASETS}")
    table, _, _ = write_flower_mosaics(tmp_path / "mosaics", 160, "space", tile=48)
    rows = list(csv.DictReader(table.open()))
    blank = [row for row in rows if not row["tags"]][:3]
    assert len(blank) == 3
    for row in blank:  # empty mosaics said to hold a daisy: an extra label each
        row["tags"] = "daisy"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "tags"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "issues"
    result = CliRunner().invoke(app, ["check", str(table), "--labels", "--labels-out", str(out)])
    assert result.exit_code == 0, result.output
    assert "likely missing or extra labels" in result.output
    listed = list(csv.DictReader((out / "label_issues.csv").open()))
    assert list(listed[0]) == ["path", "given", "suggested", "missing", "extra", "score"]
    by_path = {row["path"]: row for row in listed}
    for row in blank:
        issue = by_path[f"images/{row['image']}"]
        assert issue["given"] == "daisy" and issue["extra"] == "daisy" and issue["suggested"] == ""
    for row in listed:  # the suggested set is the given one less the extra labels, plus the missing
        given, suggested, missing, extra = (
            set(filter(None, row[column].split("|"))) for column in ("given", "suggested", "missing", "extra")
        )
        assert (missing and not missing & given) or (extra and extra <= given)
        assert suggested == (given - extra) | missing
    assert (out / "label_issues.png").is_file()
