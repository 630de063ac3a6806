"""The decoded-image cache: decode once, read back on the next run, keyed by files and spec, within budget."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL
import pytest

import imgclf
import imgclf.data.prepared
from conftest import write_class_folders
from imgclf.data import cache as image_cache
from imgclf.data.prepared import prepare_data
from imgclf.data.preprocess import PreprocessSpec, load_prepared
from imgclf.data.sources import scan_source
from imgclf.errors import DataError

SPEC = PreprocessSpec(20, 20, 1)


class CountingDecodes:
    """Counts calls of decode_all, to prove a run read the cache instead of decoding."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import imgclf.data.prepared as prepared

        self.calls = 0
        original = prepared.decode_all

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(prepared, "decode_all", counting)


def prepare(root: Path, mode: str, spec: PreprocessSpec = SPEC, budget: float | None = None):
    image_set = scan_source(root)
    return prepare_data(image_set, np.full(len(image_set), "train", dtype=object), spec, mode, 0, (), budget)


@pytest.mark.parametrize("mode", ["auto", "disk"])
def test_second_preparation_reads_the_cache_and_gets_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path, mode: str
) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 12)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    decodes = CountingDecodes(monkeypatch)
    first = prepare(root, mode)
    second = prepare(root, mode)
    assert decodes.calls == 1
    assert first.cache_mode == second.cache_mode == ("ram" if mode == "auto" else "disk")
    assert isinstance(second.images, np.memmap) == (mode == "disk")
    np.testing.assert_array_equal(first.images[first.rows], second.images[second.rows])
    assert [p.path for p in second.problems] == ["b/broken.png"]  # the skipped file is remembered too
    assert len(second.image_set) == 24
    assert len(list((isolated_cache / "decoded").iterdir())) == 1


def test_changed_files_or_spec_are_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 8)
    decodes = CountingDecodes(monkeypatch)
    prepare(root, "auto")
    prepare(root, "auto", PreprocessSpec(24, 24, 1))  # another size
    assert decodes.calls == 2
    target = root / "a" / "a_000.png"
    write_class_folders(tmp_path / "other", ["x"], 1, seed=9)
    target.write_bytes((tmp_path / "other" / "x" / "x_000.png").read_bytes())
    os.utime(target, ns=(1, 1))  # new content and modification time
    changed = prepare(root, "auto")
    assert decodes.calls == 3
    row = changed.rows[changed.image_set.keys.index("a/a_000.png")]
    np.testing.assert_array_equal(changed.images[row], load_prepared(target, SPEC))
    prepare(root, "auto")
    assert decodes.calls == 3
    assert len(list((isolated_cache / "decoded").iterdir())) == 3
    monkeypatch.setattr(PIL, "__version__", "99.0.0")  # another Pillow may decode or resize differently
    prepare(root, "auto")
    assert decodes.calls == 4


def test_ram_mode_refuses_more_than_its_budget_and_auto_goes_to_disk(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 10)
    needed_gb = 20 * 20 * 20 / 2**30
    with pytest.raises(DataError, match="over the RAM cache budget"):
        prepare(root, "ram", budget=needed_gb / 2)
    prepared = prepare(root, "auto", budget=needed_gb / 2)
    assert prepared.cache_mode == "disk" and isinstance(prepared.images, np.memmap)
    assert prepare(root, "ram", budget=needed_gb).cache_mode == "ram"


def test_ram_mode_writes_nothing_to_the_cache_folder(tmp_path: Path, isolated_cache: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 6)
    prepare(root, "ram")
    assert not (isolated_cache / "decoded").exists()


def test_arrays_from_python_are_never_written_to_disk(isolated_cache: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (40, 12, 12), dtype=np.uint8)
    labels = np.arange(40) % 2
    image_set = imgclf.data.prepared.load_data(images, imgclf.config.DataConfig(), labels=labels)
    plan = image_cache.plan_cache("disk", image_set, PreprocessSpec(12, 12, 1))
    assert plan.key is None and plan.mode == "ram"


def test_training_from_the_disk_cache_matches_training_from_ram(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b", "c"], 16)
    runs = {}
    for mode in ("ram", "disk", "disk", "none"):  # the second disk run reads the cache
        run = imgclf.train(
            root,
            model="cnn-small",
            epochs=2,
            batch_size=16,
            seed=5,
            cache=mode,
            workers=0,
            project=str(tmp_path / "runs"),
            name=mode,
        )
        runs.setdefault(mode, []).append(run.history)
    reference = runs["ram"][0]
    for history in runs["disk"] + runs["none"]:
        np.testing.assert_allclose(history["val_acc"], reference["val_acc"])
        np.testing.assert_allclose(history["train_loss"], reference["train_loss"], rtol=1e-5)


def test_cache_command_lists_and_clears(tmp_path: Path, isolated_cache: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    root = write_class_folders(tmp_path / "data", ["a", "b"], 5)
    prepare(root, "disk")
    runner = CliRunner()
    listed = runner.invoke(app, ["cache"])
    assert listed.exit_code == 0 and "decoded" in listed.output and "10 images 20×20×1" in listed.output
    assert runner.invoke(app, ["cache", "--kind", "nope"]).exit_code == 2
    cleared = runner.invoke(app, ["cache", "--clear", "--kind", "decoded"])
    assert cleared.exit_code == 0 and "freed" in cleared.output
    assert not (isolated_cache / "decoded").exists()
    assert "0 entries" in runner.invoke(app, ["cache"]).output


def test_headers_are_read_once_and_again_after_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    from imgclf.data import headers, imageset

    monkeypatch.setattr(headers, "HEADER_CACHE_MIN", 10)
    root = write_class_folders(tmp_path / "data", ["a", "b"], 8)
    (root / "b" / "broken.png").write_bytes(b"not a png at all")
    opened: list[str] = []
    original = imageset.FileReader.header

    def counting(self, key):
        opened.append(key)
        return original(self, key)

    monkeypatch.setattr(imageset.FileReader, "header", counting)
    first = headers.read_headers(scan_source(root))
    assert len(opened) == 17 and len(first) == 16
    second = headers.read_headers(scan_source(root))
    assert len(opened) == 17  # nothing opened: the headers came from the cache folder
    assert second.headers == first.headers and [p.path for p in second.problems] == ["b/broken.png"]
    os.utime(root / "a" / "a_000.png", ns=(5, 5))
    headers.read_headers(scan_source(root))
    assert len(opened) == 34
    assert len(list((isolated_cache / "headers").iterdir())) == 2


@pytest.mark.parametrize("target", ["default", "memmap", "private-memmap", "plain"])
def test_decode_workers_fill_every_kind_of_target_like_the_main_process(tmp_path: Path, target: str) -> None:
    """Workers write rows straight into shared targets; other targets get the rows sent back."""
    from imgclf.data.loader import _is_shared, decode_all

    root = write_class_folders(tmp_path / "data", ["a", "b", "c"], 50)  # 150 files: three chunks
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image_set = scan_source(root)
    shape = (len(image_set), SPEC.height, SPEC.width, SPEC.channels)
    expected, expected_ok, expected_problems = decode_all(image_set, SPEC, workers=0)
    out = None
    if target == "memmap":
        out = np.memmap(tmp_path / "rows.u8", dtype=np.uint8, mode="w+", shape=shape)
    elif target == "private-memmap":
        np.zeros(shape, dtype=np.uint8).tofile(tmp_path / "rows.u8")
        out = np.memmap(tmp_path / "rows.u8", dtype=np.uint8, mode="c", shape=shape)
    elif target == "plain":
        out = np.zeros(shape, dtype=np.uint8)
    images, ok, problems = decode_all(image_set, SPEC, workers=2, out=out)
    assert _is_shared(images) == (target in ("default", "memmap"))
    np.testing.assert_array_equal(ok, expected_ok)
    assert not ok.all() and ok.sum() == 150
    np.testing.assert_array_equal(images, expected)
    assert [(p.path, p.kind) for p in problems] == [(p.path, p.kind) for p in expected_problems]
    assert [p.path for p in problems] == ["b/broken.png"]


def test_random_resized_crops_cache_the_training_split_larger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    """With crops on and photos large enough, the training split is decoded 1.15× larger into its own
    rows; the other splits are decoded at the model's size, exactly as prediction prepares them."""
    from imgclf.config import AugmentConfig
    from imgclf.data.headers import read_headers
    from imgclf.data.prepared import crop_cache_spec, image_loader

    root = write_class_folders(tmp_path / "data", ["a", "b"], 12, size=64)
    for name in ("a/a_broken.png", "b/b_broken.png"):  # a whole header, half the pixels
        (root / name).write_bytes((root / "a" / "a_000.png").read_bytes()[:300])
    image_set = read_headers(scan_source(root))
    assert len(image_set) == 26
    spec = PreprocessSpec(48, 48, 1)
    assert crop_cache_spec(spec, AugmentConfig(crop_scale=1.0), image_set) is None  # no crops
    too_large = PreprocessSpec(60, 60, 1)  # 69 px cached: larger than the photos
    assert crop_cache_spec(too_large, AugmentConfig(crop_scale=0.5), image_set) is None
    train_spec = crop_cache_spec(spec, AugmentConfig(crop_scale=0.5), image_set)
    assert (train_spec.height, train_spec.width) == (55, 55) and train_spec.channels == 1

    splits = np.asarray(["train" if i % 3 else "val" for i in range(len(image_set))], dtype=object)
    decodes = CountingDecodes(monkeypatch)
    for _ in range(2):  # the second preparation reads both parts from the cache
        prepared = prepare_data(image_set, splits, spec, "auto", 0, (), None, train_spec)
        assert decodes.calls == 2
        assert sorted(p.path for p in prepared.problems) == ["a/a_broken.png", "b/b_broken.png"]
        assert len(prepared.image_set) == 24
        for split, expected in (("train", train_spec), ("val", spec)):
            batches = list(prepared.loader(split, 64, shuffle=False).epoch(0))
            assert batches[0].images.shape[1:] == (1, expected.height, expected.width)
            keys = [prepared.image_set.keys[i] for i in prepared.indices(split)]
            decoded = np.stack([load_prepared(root / key, expected) for key in keys])
            np.testing.assert_array_equal(batches[0].images.permute(0, 2, 3, 1).numpy(), decoded)
        # any sample loaded one at a time (galleries, the feature bank) is prepared as prediction
        # prepares it, a training sample too
        indices = prepared.indices("all")
        load = image_loader(prepared, indices)
        for position in (0, 1, 2, len(indices) - 1):
            key = prepared.image_set.keys[indices[position]]
            np.testing.assert_array_equal(load(position), load_prepared(root / key, spec))
    assert len(list((isolated_cache / "decoded").iterdir())) == 2
    with pytest.raises(ValueError, match="another size"):
        prepared.loader("all", 64, shuffle=False)
