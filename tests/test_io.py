"""Writes that survive: flushed to disk, a model folder swap interrupted between its renames put
back, and a prediction file resumed after a kill in its header."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imgclf import io as imgclf_io
from imgclf.artifact import resolve_artifact_path
from imgclf.inference.writer import PredictionWriter
from imgclf.io import recover_dir, replace_dir_atomic, write_text_atomic


def test_atomic_writes_flush_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(imgclf_io.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    write_text_atomic(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello" and len(synced) == 2  # the file, then its folder
    synced.clear()
    replace_dir_atomic(tmp_path / "model", lambda tmp: (tmp / "w").write_text("1"))
    assert len(synced) >= 3  # the file, the new folder, the parent


def test_a_model_folder_interrupted_between_its_renames_is_recovered(
    shapes_model: tuple[Path, Path], tmp_path: Path
) -> None:
    artifact, _ = shapes_model
    run = tmp_path / "run"
    shutil.copytree(artifact, run / "model")
    os.replace(run / "model", run / ".model.old")  # killed after the first rename of replace_dir_atomic
    assert not (run / "model").exists()
    assert resolve_artifact_path(run) == run / "model"  # loading puts it back
    assert (run / "model" / "imgclf.json").is_file() and not (run / ".model.old").exists()
    os.replace(run / "model", run / ".model.old")
    replace_dir_atomic(run / "model", lambda tmp: (tmp / "new").write_text("2"))  # the next save too
    assert (run / "model" / "new").is_file() and not (run / ".model.old").exists()
    recover_dir(run / "model")  # nothing to do: harmless
    assert (run / "model" / "new").is_file()


@pytest.mark.parametrize("cut", [7, 20])
def test_resuming_a_prediction_file_cut_in_its_header_writes_the_header(tmp_path: Path, cut: int) -> None:
    out = tmp_path / "p.csv"
    header = "path,label_1,name_1,prob_1,error"
    out.write_text(header[:cut])  # killed while the header was being written
    PredictionWriter(out, top_k=1, resume=True).close()
    assert out.read_text() == header + "\n"
