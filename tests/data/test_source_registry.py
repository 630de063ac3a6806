"""Data sources are one registry: each kind is one file that recognises its input and scans it, and
the messages that say what a user may give are made from the sources there are."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
import imgclf.data.sources as sources_package
from imgclf.data.sources import SOURCES, data_edits, scan_source, source_entries, sources_phrase
from imgclf.errors import DataError, UsageError

NEW_SOURCE = '''
    """A folder of images named <class>__<anything>.png (a source in one file)."""

    from __future__ import annotations

    import numpy as np

    from imgclf.data.imageset import FileReader, ImageSet

    PRIORITY = 35
    NOUN = "a folder of <class>__<name> images"
    EDITS = None


    def _images(path):
        return sorted(p for p in path.iterdir() if p.is_file() and "__" in p.stem and p.suffix == ".png")


    def recognise(query) -> bool:
        return query.path.is_dir() and bool(_images(query.path))


    def scan(query) -> ImageSet:
        files = _images(query.path)
        names = [p.stem.split("__")[0] for p in files]
        classes = sorted(set(names))
        return ImageSet(
            [p.name for p in files],
            np.array([classes.index(name) for name in names]),
            classes,
            reader=FileReader(query.path),
            layout="named-files",
            source=str(query.path),
        )
'''


def _named_files(folder: Path, per_class: int = 40) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, value in (("dark", 40), ("light", 210)):
        for index in range(per_class):
            pixels = np.clip(value + rng.normal(0, 12, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{name}__{index}.png")
    return folder


def test_the_sources_are_tried_in_their_order_and_speak_with_one_phrase(tmp_path: Path) -> None:
    assert [entry.name for entry in source_entries()] == [
        "archive",
        "parquet",
        "split-folders",
        "split-tables",
        "idx",
        "table",
        "class-folders",
    ]
    phrase = sources_phrase()
    assert "a folder of class folders" in phrase and "a CSV/TSV table" in phrase and "IDX files" in phrase
    assert "a Hugging Face Parquet image set (data/train-*.parquet)" in phrase
    with pytest.raises(UsageError, match=r"data not found: .* \(give an archive"):
        scan_source(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="none of what imgclf reads: an archive"):
        scan_source(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds none of what imgclf reads"):
        scan_source(tmp_path / "empty")


def test_how_review_may_change_data_is_the_sources_answer(shapes_dir: Path, tmp_path: Path) -> None:
    assert data_edits(shapes_dir) == "folders"
    table = tmp_path / "labels.csv"
    table.write_text(
        "path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(shapes_dir.rglob("*.png")))
    )
    assert data_edits(table) == "table"
    import shutil

    archive = shutil.make_archive(str(tmp_path / "shapes"), "zip", shapes_dir.parent, shapes_dir.name)
    assert data_edits(archive) is None


def test_a_new_source_is_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "named_files.py").write_text(textwrap.dedent(NEW_SOURCE))
    monkeypatch.setattr(sources_package, "__path__", [*sources_package.__path__, str(folder)])
    assert "named-files" in SOURCES.names()
    assert [entry.name for entry in source_entries()][-2:] == ["named-files", "class-folders"]
    assert "a folder of <class>__<name> images" in sources_phrase()
    data = _named_files(tmp_path / "photos")
    image_set = scan_source(data)
    assert image_set.classes == ["dark", "light"] and len(image_set) == 80
    report = imgclf.check(data)  # the audit reads it through the same registry
    assert report is not None
    run = imgclf.train(data, model="cnn-small", epochs=6, image_size=[16, 16], project=str(tmp_path / "runs"))
    assert run.metrics["val_count"] == 16 and run.metrics["val_acc"] >= 0.9
    answer = imgclf.load_model(run.artifact).predict(str(data / "light__3.png"))[0]
    assert answer.label == "light"
