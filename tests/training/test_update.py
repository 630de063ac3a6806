"""`update`: the head refitted on corrected labels, new images and a new class; the decisions
log, the overlay, moves and their revert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import imgclf
from conftest import shape_image, write_class_folders
from imgclf.data.decisions import (
    Decision,
    DecisionLog,
    apply_overlay,
    apply_to_folders,
    apply_to_table,
    current_decisions,
    file_digest,
    read_decisions,
    revert_folders,
)
from imgclf.data.sources import scan_source
from imgclf.training.update import update_run


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Shapes with 8 squares filed as discs, and a small CNN trained on them."""
    root = tmp_path_factory.mktemp("noisy")
    data = write_class_folders(root / "data", ["square", "disc", "cross"], 40, size=28, mode="RGB")
    wrong = []
    for index in range(8):
        source = data / "square" / f"square_{index:03d}.png"
        target = data / "disc" / f"square_{index:03d}.png"
        shutil.move(source, target)
        wrong.append(f"disc/square_{index:03d}.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        run = imgclf.train(
            data, model="cnn-small", epochs=3, batch_size=16, image_size=[32, 32], seed=1,
            project=str(root / "runs"), name="noisy",
        )  # fmt: skip
    return run.run_dir, data, wrong


def relabel(path: str, old: str, new: str, data: Path) -> Decision:
    return Decision(f"label-issue:{path}", "relabel", path, file_digest(data / path), "label-issue", old, new)


def test_decisions_are_appended_durably_and_undone(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "review.jsonl")
    log.append(Decision("a:x.png", "relabel", "x.png", "d1", "label-issue", "cat", "dog"))
    log.append(Decision("b:y.png", "exclude", "y.png", "d2", "corrupt", "cat"))
    log.append(Decision("a:x.png", "undo", "x.png"))
    with (tmp_path / "review.jsonl").open("a") as handle:
        handle.write('{"item": "c:z.png", "act')  # killed while writing
    decisions = read_decisions(tmp_path / "review.jsonl")
    assert len(decisions) == 3
    assert {item: d.action for item, d in current_decisions(decisions).items()} == {"b:y.png": "exclude"}


def test_overlay_moves_and_revert(noisy_run, tmp_path: Path) -> None:
    _, original, wrong = noisy_run
    data = tmp_path / "data"
    shutil.copytree(original, data)
    decisions = [relabel(path, "disc", "square", data) for path in wrong[:5]]
    decisions.append(
        Decision(f"corrupt:{wrong[5]}", "exclude", wrong[5], file_digest(data / wrong[5]), "corrupt", "disc")
    )
    star = Decision("x:cross/cross_000.png", "relabel", "cross/cross_000.png", "", "mistake", "cross", "star")
    star.new_class = True  # a class the user created in the review, on purpose
    decisions.append(star)
    overlay = apply_overlay(scan_source(data), decisions)
    assert overlay.relabelled == 6 and overlay.removed == 1 and overlay.new_classes == ["star"]
    image_set = overlay.image_set
    assert image_set.classes[image_set.labels[image_set.keys.index(wrong[0])]] == "square"
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    applied = apply_to_folders(data, decisions)
    assert len(applied.moved) == 7 and not applied.skipped
    assert (data / "square" / Path(wrong[0]).name).is_file() and not (data / wrong[0]).exists()
    assert (data / "star" / "cross_000.png").is_file()
    assert (data / ".imgclf-review" / "excluded" / wrong[5]).is_file()
    found = scan_source(data)
    assert sorted(found.classes) == ["cross", "disc", "square", "star"]  # the hidden folder is no class
    # the overlay still finds a moved image by its content
    moved = apply_overlay(found, decisions)
    assert moved.relabelled == 0 and moved.removed == 0
    reverted = revert_folders(data)
    assert reverted.undone == 7 and not reverted.kept
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png")) == before
    assert not (data / "star").exists() and not (data / ".imgclf-review").exists()


def test_reviewed_table_is_written_beside_the_old_one(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("image,label\na.png,cat\nb.png,cat\nc.png,dog\n")
    decisions = [
        Decision("i:a.png", "relabel", "a.png", "", "label-issue", "cat", "dog"),
        Decision("i:c.png", "none", "c.png", "", "mistake", "dog"),
    ]
    out = apply_to_table(table, "image", "label", decisions)
    assert out.name == "labels.reviewed.csv"
    assert out.read_text().splitlines() == ["image,label", "a.png,dog", "b.png,cat"]
    assert table.read_text().splitlines()[1] == "a.png,cat"  # the old one untouched


def test_update_refits_the_head_on_corrected_labels(noisy_run, tmp_path: Path, monkeypatch) -> None:
    run_dir, data, wrong = noisy_run
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    log = DecisionLog(tmp_path / "review.jsonl")
    for path in wrong:
        log.append(relabel(path, "disc", "square", data))
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(5)
    for index in range(6):  # a new class, labelled in the review
        image = shape_image(3, 28, rng, "RGB")
        image.save(new / f"star_{index}.png")
        log.append(
            Decision(
                f"new:{new / f'star_{index}.png'}",
                "label",
                str(new / f"star_{index}.png"),
                "",
                "new",
                None,
                "star",
            )
        )
    first = update_run(run_dir, tmp_path / "review.jsonl")
    assert first.relabelled == 8 and first.added == 6 and first.new_classes == ["star"]
    assert first.computed == 126  # every image once
    info = json.loads((first.artifact / "imgclf.json").read_text())
    assert info["classes"] == ["cross", "disc", "square", "star"]
    assert info["training"]["head_refitted"] and info["architecture"]["num_classes"] == 4
    manifest = (first.run_dir / "manifest.csv").read_text()
    assert "square_000.png,square" in manifest and "star_0.png,star,train" in manifest
    assert first.val_acc_after >= first.val_acc_before
    predictor = imgclf.Predictor.from_path(first.artifact)
    assert predictor.predict(str(data / wrong[0]))[0].label in ("square", "disc")
    second = update_run(run_dir, tmp_path / "review.jsonl")
    assert second.computed == 0  # the features came from the store
    assert second.run_dir != first.run_dir
    assert second.metrics["val_acc"] == pytest.approx(first.metrics["val_acc"])
    # the same photos in another folder, one of them moved and renamed (a corrected copy): known by
    # their content, none goes through the network again
    copy = tmp_path / "corrected"
    shutil.copytree(data, copy)
    (copy / "disc" / "square_000.png").rename(copy / "square" / "renamed.png")
    third = update_run(run_dir, data=copy)
    assert third.computed == 0


def test_update_after_a_head_only_run_reuses_the_features_training_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head-only run computes the backbone's features of every image in float32 at the model's
    size; the store keeps them by content, so `update` on a corrected copy computes none."""
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    data = write_class_folders(tmp_path / "data", ["square", "disc", "cross"], 20, size=28, mode="RGB")
    run = imgclf.train(
        data, model="efficientnet_lite0", pretrained=True, head_only=True, epochs=2, batch_size=16,
        image_size=[64, 64], seed=1,
        project=str(tmp_path / "runs"), name="head",
    )  # fmt: skip
    copy = tmp_path / "corrected"
    shutil.copytree(data, copy)
    (copy / "disc" / "disc_000.png").rename(copy / "square" / "was_disc.png")
    updated = update_run(run.run_dir, data=copy)
    assert updated.computed == 0
    shutil.rmtree(tmp_path / "cache" / "features")  # without the store: every image again
    assert update_run(run.run_dir, data=copy).computed == 60


def test_update_after_a_bf16_transfer_head_reuses_its_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transfer recipe's head on a bf16 CPU (AMX, AVX-512 BF16) computes the features in bf16:
    they are stored too, so the `update` after a zero-flag run that kept the head computes none."""
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    data = write_class_folders(tmp_path / "data", ["square", "disc", "cross"], 20, size=28, mode="RGB")
    run = imgclf.train(
        data, model="efficientnet_lite0", pretrained=True, epochs=0, precision="bf16", batch_size=16,
        image_size=[64, 64], seed=1, project=str(tmp_path / "runs"), name="bf16",
    )  # fmt: skip
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["train"]["precision"] == "bf16"
    copy = tmp_path / "corrected"
    shutil.copytree(data, copy)
    (copy / "disc" / "disc_000.png").rename(copy / "square" / "was_disc.png")
    assert update_run(run.run_dir, data=copy).computed == 0
