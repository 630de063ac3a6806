"""Archives are anyone's files: a budget checked before anything is written, and unpacks that two
processes can run at once."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from conftest import write_class_folders
from imgclf.data import archives
from imgclf.data.sources import scan_source
from imgclf.errors import DataError


def _bomb(path: Path, members: int = 4, size: int = 4 * 2**20) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(members):
            archive.writestr(f"a/{index}.png", b"\0" * size)
    return path


def test_an_archive_that_unpacks_far_beyond_its_size_is_refused_before_anything_is_written(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "ARCHIVE_MIN_BUDGET", 2**20)
    bomb = _bomb(tmp_path / "bomb.zip")  # 16 MiB declared in about 65 KB
    with pytest.raises(
        DataError, match=r"declares 16 MiB in 4 members .* imgclf --archive-budget-gb GB allows more"
    ):
        scan_source(bomb)
    assert not any((isolated_cache / "archives").iterdir())  # nothing unpacked, nothing left behind
    monkeypatch.setenv("IMGCLF_ARCHIVE_BUDGET_GB", "0.05")  # the user's word: 50 MiB
    assert len(scan_source(bomb)) == 4  # unpacked now (decoding them is another story)
    assert len(list((isolated_cache / "archives").iterdir())) == 1


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "ARCHIVE_MAX_MEMBERS", 10)
    with pytest.raises(DataError, match="holds 20 members, over the limit of 10"):
        scan_source(_bomb(tmp_path / "many.zip", members=20, size=10))


def test_real_image_archives_pass_the_budget(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 6, size=32)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for file in sorted(root.rglob("*.png")):
            handle.write(file, file.relative_to(tmp_path))
    assert len(scan_source(archive)) == 12


def test_concurrent_unpacks_of_one_archive_share_one_folder(tmp_path: Path, isolated_cache: Path) -> None:
    root = write_class_folders(tmp_path / "data", ["a", "b"], 20, size=32)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted(root.rglob("*.png")):
            handle.write(file, file.relative_to(tmp_path))
    folders, errors = [], []

    def unpack() -> None:
        try:
            folders.append(archives.unpack_archive(archive))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(folders)) == 1
    assert len(list(folders[0].rglob("*.png"))) == 40
    assert folders[0].name == archives._file_sha256(archive)  # the whole digest names it
    assert not list((isolated_cache / "archives").glob(".*.unpacking"))


def test_the_archive_budget_flag_raises_the_budget_from_the_command_line(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    monkeypatch.setattr(archives, "ARCHIVE_MIN_BUDGET", 2**20)
    monkeypatch.setenv("IMGCLF_ARCHIVE_BUDGET_GB", "")  # so that what the flag sets is undone after
    monkeypatch.delenv("IMGCLF_ARCHIVE_BUDGET_GB")
    bomb = _bomb(tmp_path / "bomb.zip")
    refused = CliRunner().invoke(app, ["check", str(bomb)])
    assert refused.exit_code != 0 and "--archive-budget-gb GB allows more" in refused.output
    allowed = CliRunner().invoke(app, ["--archive-budget-gb", "0.05", "check", str(bomb)])
    assert "over its budget" not in allowed.output
    assert len(list((isolated_cache / "archives").iterdir())) == 1  # unpacked this time
    bad = CliRunner().invoke(app, ["--archive-budget-gb", "0", "check", str(bomb)])
    assert bad.exit_code == 2 and "must be above 0" in bad.output


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_tar_whose_first_member_declares_gigabytes_is_refused_at_its_header(
    tmp_path: Path, isolated_cache: Path, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bz2
    import gzip
    import lzma
    import tarfile

    module, reader = {"gz": (gzip, "GzipFile"), "bz2": (bz2, "BZ2File"), "xz": (lzma, "LZMAFile")}[
        compression
    ]
    compress = module.compress
    member = tarfile.TarInfo("a/huge.png")
    member.size = 8 * 2**30  # zeros that are really there, in streams of 64 MiB
    bomb = tmp_path / f"huge.tar.{compression}"
    zeros = compress(b"\0" * 2**26)
    with bomb.open("wb") as handle:
        handle.write(compress(member.tobuf(format=tarfile.GNU_FORMAT)))
        handle.writelines(zeros for _ in range(member.size // 2**26))
        handle.write(compress(b"\0" * 1024))
    read = [0]  # bytes decompressed: the data behind the header must never be
    original = getattr(module, reader).read

    def counted(self, *args):
        data = original(self, *args)
        read[0] += len(data)
        return data

    monkeypatch.setattr(getattr(module, reader), "read", counted)
    with pytest.raises(DataError, match=r"declares at least 8,192 MiB in its first member"):
        scan_source(bomb)
    assert read[0] < 2**20, read[0]
    assert not any((isolated_cache / "archives").iterdir())
