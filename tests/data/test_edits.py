"""What changes a user's data folder (`imgclf.data.edits`, through `review --apply` and `--revert`):
properties over random trees and random, crafted decision logs; a kill at every step; and the
one-example cases the attacks found (a crafted label, a collision, `.git` after a revert)."""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclf.data import edits, safe_files
from imgclf.data.decisions import Decision, apply_to_folders, apply_to_table, file_digest, revert_folders
from imgclf.data.edits import REVIEW_FOLDER, FolderEdits, write_new_file
from imgclf.errors import DataError, ImgclfError, UsageError

CLASSES = ("a", "b", "c d", "é")
NAMES = ("x.png", "y.png", "x-1.png", "Z.PNG")
CRAFTED_LABELS = (
    "../../victim",
    "/tmp/victim",
    "",
    ".hidden",
    "a/b",
    "x\0y",
    REVIEW_FOLDER,
    "..",
    "a\\b",
    " a",
)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (its sha256) and folder ("dir") under `folder`, empty folders included."""
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), folder)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def contents(folder: Path) -> collections.Counter:
    """The multiset of file contents under `folder`, imgclf's journal and lock left out."""
    skip = {folder / REVIEW_FOLDER / edits.JOURNAL_FILE, folder / REVIEW_FOLDER / edits.LOCK_FILE}
    return collections.Counter(
        hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file() and path not in skip
    )


def decision(path: str, action: str = "relabel", new: str | None = None, **fields) -> Decision:
    values = {"sha256": "", "finding": "label-issue", "old": None, "time": time.time()} | fields
    return Decision(f"{values['finding']}:{path}", action, path, new=new, **values)


def make_world(root: Path, tree: dict[str, list[tuple[str, int]]], extras: set[str]) -> tuple[Path, Path]:
    """`root/data` holding `tree` (class → (name, content id)), the user's own folders in `extras`;
    `root/outside` (a sentinel tree) and `root/inbox` (new images) beside it."""
    data = root / "data"
    for name, files in tree.items():
        (data / name).mkdir(parents=True, exist_ok=True)
        for file, content in files:
            (data / name / file).parent.mkdir(parents=True, exist_ok=True)
            (data / name / file).write_bytes(png(content))
    if "git" in extras:
        (data / ".git" / "refs" / "tags").mkdir(parents=True)
        (data / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    if "empty" in extras:
        (data / "empty").mkdir()
    if "nested-empty" in extras:
        (data / next(iter(tree)) / "keep").mkdir()
    (root / "outside" / "deep").mkdir(parents=True)
    (root / "outside" / "keep.png").write_bytes(png(900))
    (root / "outside" / "deep" / "f.png").write_bytes(png(901))
    (root / "inbox").mkdir()
    (root / "inbox" / "n1.png").write_bytes(png(902))
    (root / "inbox" / "x.png").write_bytes(png(903))
    return data, root / "inbox"


trees = st.dictionaries(
    st.sampled_from(CLASSES),
    st.lists(
        st.tuples(st.sampled_from((*NAMES, "sub/x.png")), st.integers(0, 5)),
        max_size=4,
        unique_by=lambda entry: entry[0],
    ),
    min_size=2,
    max_size=4,
).filter(lambda tree: sum(len(files) for files in tree.values()) > 0)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict, set[str], list[tuple], bool]:
    """A tree, the user's own folders, a decision sequence over the tree's files (with undos, new
    images, new classes, content hashes given or missing), and whether a crafted decision ends it."""
    tree = draw(trees)
    extras = draw(st.sets(st.sampled_from(["git", "empty", "nested-empty"])))
    keys = [f"{name}/{file}" for name, files in tree.items() for file, _ in files]
    classes = list(tree)
    step = st.one_of(
        st.tuples(st.just("relabel"), st.sampled_from(keys), st.sampled_from([*classes, "new one"])),
        st.tuples(st.sampled_from(["exclude", "none", "keep"]), st.sampled_from(keys), st.none()),
        st.tuples(st.just("label"), st.sampled_from(["n1.png", "x.png"]), st.sampled_from(classes)),
        st.tuples(st.just("undo"), st.sampled_from(keys), st.none()),
    )
    # new images: from the inbox, or any image file the user can read (the sentinel's): only copied
    step = step | st.tuples(st.just("label"), st.just("../outside/keep.png"), st.sampled_from(classes))
    steps = draw(st.lists(st.tuples(step, st.sampled_from(["real", ""])), max_size=8))
    crafted = draw(
        st.none()
        | st.tuples(st.just("label"), st.sampled_from(keys), st.sampled_from(CRAFTED_LABELS))
        | st.tuples(
            st.just("path"),
            st.sampled_from(
                ["../outside/keep.png", "ABS", "a/../b/x.png", "a//x.png", "./a/x.png", "a\\x.png"]
            ),
            st.sampled_from(classes),
        )
        | st.tuples(st.just("new-image"), st.sampled_from(keys), st.sampled_from(classes))
    )
    return tree, extras, steps, crafted


def write_decisions(
    data: Path, inbox: Path, root: Path, steps: list, crafted: tuple | None
) -> list[Decision]:
    out: list[Decision] = []
    clock = 1_000_000.0
    for (action, target, label), digest in steps:
        clock += 1
        if action == "label":
            path = str(inbox / target)
            out.append(decision(path, "label", label, finding="new", time=clock, new_class=False))
            continue
        sha = file_digest(data / target) if digest == "real" else ""  # identical files: the same hash
        kind = "label-issue" if action != "exclude" else "corrupt"
        if action == "undo":
            out.append(Decision(f"{kind}:{target}", "undo", target, time=clock))
        elif action == "relabel":
            new_class = label == "new one"
            out.append(decision(target, "relabel", label, sha256=sha, time=clock, new_class=new_class))
        else:
            out.append(decision(target, action, None, sha256=sha, finding=kind, time=clock))
    if crafted is not None:
        clock += 1
        kind, target, label = crafted
        if kind == "label":
            out.append(decision(target, "relabel", label, time=clock, new_class=True, finding="crafted"))
        elif kind == "path":
            path = str(root / "outside" / "keep.png") if target == "ABS" else target
            out.append(decision(path, "relabel", label, time=clock, finding="crafted"))
        else:  # a "new image" that is a file of the data itself, by its absolute path
            out.append(decision(str(data / target), "label", label, finding="new", time=clock))
    return out


@pytest.mark.parametrize("rename", ["renameat2", "link-unlink"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds())
def test_apply_never_loses_a_file_or_leaves_the_folder_and_revert_restores_it_exactly(
    world, rename: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, extras, steps, crafted = world
    if rename == "link-unlink":
        monkeypatch.setattr(safe_files, "_renameat2", None)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data, inbox = make_world(root, tree, extras)
        decisions = write_decisions(data, inbox, root, steps, crafted)
        original = snapshot(data)
        beside = {name: snapshot(root / name) for name in ("outside", "inbox")}
        before = contents(data)
        try:
            applied = apply_to_folders(data, decisions)
        except ImgclfError as error:
            assert crafted is not None, f"refused without a crafted decision: {error}"
            assert "\n" not in str(error) and "nothing was changed" in str(error)
            assert snapshot(data) == original  # refused before anything moved; no folder left behind
        else:
            assert crafted is None, crafted
            copies = collections.Counter(
                hashlib.sha256(Path(s).read_bytes()).hexdigest() for s, _ in applied.copied
            )
            assert contents(data) == before + copies  # every file exactly once, plus the copies
            again = apply_to_folders(data, decisions)  # applying twice changes nothing more
            assert not again.moved and not again.copied
            if applied.moved or applied.copied:
                result = revert_folders(data)
                assert not result.kept, result.kept
                assert result.undone == len(applied.moved) + len(applied.copied)
            assert snapshot(data) == original  # files, names and empty folders, as they were
        for name, seen in beside.items():
            assert snapshot(root / name) == seen  # nothing outside the data folder changed


# --------------------------------------------------------------------------------------------------
# a kill at every step
# --------------------------------------------------------------------------------------------------
def fault_world(root: Path) -> tuple[Path, list[Decision]]:
    tree = {"a": [("x.png", 1), ("y.png", 2), ("sub/z.png", 3)], "b": [("x.png", 4)], "c": [("x.png", 5)]}
    data, inbox = make_world(root, tree, {"git", "empty"})
    decisions = [
        decision("a/x.png", "relabel", "c"),  # c/x.png is taken: a free name
        decision("b/x.png", "relabel", "c"),  # and the same name again
        decision("a/sub/z.png", "relabel", "d", new_class=True),  # a new class: its folders made
        decision("a/y.png", "exclude", finding="corrupt"),
        decision(str(inbox / "x.png"), "label", "b", finding="new"),  # copied, b/x.png is taken
        decision(str(inbox / "n1.png"), "label", "d", finding="new", new_class=True),
    ]
    return data, decisions


def run_killed(work, at: int) -> bool:
    """Run `work()` in a child process killed (SIGKILL) at its `at`-th step; True if it was killed."""
    pid = os.fork()
    if pid == 0:  # the child
        count = [0]

        def hook(name: str) -> None:
            count[0] += 1
            if count[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)

        edits._step_hook = hook
        try:
            work()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def count_steps(work) -> int:
    count = [0]
    edits._step_hook = lambda name: count.__setitem__(0, count[0] + 1)
    try:
        work()
    finally:
        edits._step_hook = None
    return count[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child process")
@pytest.mark.parametrize("rename", ["renameat2", "link-unlink"])
def test_a_kill_at_any_step_of_apply_or_revert_then_the_same_command_leaves_every_file_once(
    tmp_path: Path, rename: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rename == "link-unlink":
        monkeypatch.setattr(safe_files, "_renameat2", None)
    probe, decisions = fault_world(tmp_path / "probe")
    steps = count_steps(lambda: apply_to_folders(probe, decisions))
    revert_steps = count_steps(lambda: revert_folders(probe))
    assert steps > 20 and revert_steps > 10
    for phase, total in (("apply", steps), ("revert", revert_steps)):
        for at in range(1, total + 1):
            root = tmp_path / f"{phase}-{at}"
            data, decisions = fault_world(root)
            original, before = snapshot(data), contents(data)
            copies = collections.Counter(hashlib.sha256((root / "inbox" / n).read_bytes()).hexdigest()
                                         for n in ("x.png", "n1.png"))  # fmt: skip
            if phase == "revert":
                apply_to_folders(data, decisions)
            work = functools.partial(apply_to_folders, data, decisions)
            if phase == "revert":
                work = functools.partial(revert_folders, data)
            assert run_killed(work, at), f"{phase} was not killed at step {at}"
            if phase == "apply":
                apply_to_folders(data, decisions)  # the same command again
                assert contents(data) == before + copies, f"killed at step {at} of apply"
            revert_folders(data)
            assert snapshot(data) == original, f"killed at step {at} of {phase}"
            assert snapshot(root / "inbox") == snapshot(tmp_path / "probe" / "inbox")


# --------------------------------------------------------------------------------------------------
# the attacks, one by one
# --------------------------------------------------------------------------------------------------
def simple_world(tmp_path: Path) -> Path:
    tree = {"a": [("x.png", 1), ("y.png", 2)], "b": [("x.png", 3)], "c": [("x.png", 4)]}
    return make_world(tmp_path, tree, set())[0]


@pytest.mark.parametrize(
    ("path", "new", "problem"),
    [
        ("a/y.png", "../../victim", "a name holds no '/'"),
        ("a/y.png", "/tmp/victim", "a name holds no '/'"),
        ("a/y.png", ".imgclf-review", "hidden"),
        ("../outside/keep.png", "b", "no empty, '.' or '..' part"),
        ("OUTSIDE", "b", "an absolute path: only a new image (review --new) is named so"),
        ("a/y.png", "zebra", "not a class of the data, nor one the review created"),
    ],
)
def test_a_crafted_decision_is_refused_with_one_line_that_names_it(
    tmp_path: Path, path: str, new: str, problem: str
) -> None:
    data = simple_world(tmp_path)
    if path == "OUTSIDE":
        path = str(tmp_path / "outside" / "keep.png")
    original, outside = snapshot(data), snapshot(tmp_path / "outside")
    crafted = decision(path, "relabel", new, new_class=new != "zebra")
    with pytest.raises(DataError) as refused:
        apply_to_folders(data, [decision("b/x.png", "relabel", "c"), crafted])
    assert problem in str(refused.value) and repr(path) in str(refused.value)
    assert snapshot(data) == original and snapshot(tmp_path / "outside") == outside


def test_same_named_files_relabelled_into_one_class_never_overwrite_and_come_back(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    original, before = snapshot(data), contents(data)
    decisions = [
        decision("a/x.png", "relabel", "c"),
        decision("b/x.png", "relabel", "c", old="b"),
    ]  # no hashes
    applied = apply_to_folders(data, decisions)
    assert contents(data) == before and len({target for _, target in applied.moved}) == 2
    names = sorted(p.name for p in (data / "c").iterdir())  # x.png, and x-<its content hash>.png twice
    assert (
        len(names) == 3 and names[-1] == "x.png" and all(len(n) == len("x-12345678.png") for n in names[:2])
    )
    assert revert_folders(data).undone == 2 and snapshot(data) == original


def test_revert_removes_only_the_folders_apply_made(tmp_path: Path) -> None:
    data, _ = make_world(tmp_path, {"a": [("x.png", 1), ("y.png", 2)], "b": [("z.png", 3)]}, {"git", "empty"})
    original = snapshot(data)
    apply_to_folders(
        data, [decision("a/y.png", "relabel", "new", new_class=True), decision("b/z.png", "none")]
    )
    assert (data / "new" / "y.png").is_file() and (data / REVIEW_FOLDER / "none" / "b" / "z.png").is_file()
    (data / "b").rmdir()  # the user removes the class folder apply emptied; revert makes it again
    revert_folders(data)
    assert snapshot(data) == original  # .git/refs/tags and the user's empty folder are still there


def test_what_revert_cannot_undo_is_said_and_kept_for_a_later_try(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    original = snapshot(data)
    apply_to_folders(data, [decision("a/y.png", "relabel", "b"), decision("b/x.png", "relabel", "c")])
    (data / "a" / "y.png").write_bytes(png(50))  # something is where a/y.png was
    result = revert_folders(data)
    assert result.undone == 1 and result.kept == ["cannot put back a/y.png: something else is there now"]
    assert (data / REVIEW_FOLDER / "moves.jsonl").is_file()  # a later --revert can still try
    (data / "a" / "y.png").unlink()
    assert revert_folders(data).undone == 1 and snapshot(data) == original


def test_new_images_are_copied_in_and_only_unchanged_copies_are_removed(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    inbox = tmp_path / "inbox"
    original, inbox_before = snapshot(data), snapshot(inbox)
    new = [decision(str(inbox / name), "label", "b", finding="new") for name in ("n1.png", "x.png")]
    applied = apply_to_folders(data, new)
    copied = [target for _, target in applied.copied]
    assert copied[0] == "b/n1.png" and copied[1].startswith("b/x-")  # b/x.png was taken
    assert snapshot(inbox) == inbox_before  # never moved out of the user's inbox
    (data / copied[1]).write_bytes(png(60))  # the user edits a copy
    result = revert_folders(data)
    assert result.undone == 1 and result.kept == [
        f"kept {copied[1]}: the copy has changed since it was added"
    ]
    assert not (data / "b" / "n1.png").exists() and (data / copied[1]).is_file()
    (data / copied[1]).unlink()
    assert snapshot(data) == original


def test_one_process_at_a_time(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    with FolderEdits(data), pytest.raises(UsageError, match="another imgclf process is changing"):
        apply_to_folders(data, [decision("a/x.png", "relabel", "b")])
    assert not (data / REVIEW_FOLDER).exists()  # nothing done: nothing left behind


def test_a_class_folder_that_leads_outside_is_refused(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (data / "c").rename(tmp_path / "elsewhere" / "c")
    (data / "c").symlink_to(tmp_path / "elsewhere" / "c", target_is_directory=True)
    with pytest.raises(DataError, match="leads outside the data folder"):
        apply_to_folders(data, [decision("a/x.png", "relabel", "c")])
    with pytest.raises(DataError, match="leads outside the data folder"):
        apply_to_folders(data, [decision("c/x.png", "relabel", "a")])
    assert sorted(p.name for p in (tmp_path / "elsewhere" / "c").iterdir()) == ["x.png"]


def test_a_journal_shipped_inside_the_data_cannot_move_anything_outside(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    (data / REVIEW_FOLDER).mkdir()
    entries = [{"id": 1, "op": "move", "source": "../outside/keep.png", "target": "a/k.png"},
               {"id": 1, "state": "done"}]  # fmt: skip
    (data / REVIEW_FOLDER / "moves.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    outside = snapshot(tmp_path / "outside")
    with pytest.raises(DataError, match=r"moves.jsonl:1: .*no empty, '.' or '..' part"):
        revert_folders(data)
    assert snapshot(tmp_path / "outside") == outside


def test_a_journal_line_cut_short_by_a_kill_is_ignored(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    original = snapshot(data)
    apply_to_folders(data, [decision("a/x.png", "relabel", "b")])
    with (data / REVIEW_FOLDER / "moves.jsonl").open("a") as handle:
        handle.write('{"id": 9, "op": "mo')
    assert revert_folders(data).undone == 1 and snapshot(data) == original


def test_a_reviewed_table_never_overwrites_a_file(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("image,label\na.png,cat\nb.png,dog\n")
    (tmp_path / "labels.reviewed.csv").write_text("the user's own file\n")
    out = apply_to_table(table, "image", "label", [decision("a.png", "relabel", "dog")])
    assert out.name == "labels.reviewed-2.csv" and out.read_text().splitlines()[1] == "a.png,dog"
    assert (tmp_path / "labels.reviewed.csv").read_text() == "the user's own file\n"
    with pytest.raises(DataError, match="a name holds no '/'"):
        apply_to_table(table, "image", "label", [decision("a.png", "relabel", "../x")])
    assert write_new_file(tmp_path / "f.txt", b"1") == tmp_path / "f.txt"
    assert write_new_file(tmp_path / "f.txt", b"2") == tmp_path / "f-2.txt"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imgclf")]


def test_the_command_line_refuses_a_crafted_log_and_says_what_revert_could_not_undo(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    data = simple_world(tmp_path)
    log = tmp_path / "crafted.jsonl"
    log.write_text(decision("a/y.png", "relabel", "../../victim").to_json() + "\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["review", str(data), "--apply", "--out", str(log)])
    assert refused.exit_code == 1 and "'../../victim'" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    log.write_text(decision("a/y.png", "relabel", "b").to_json() + "\n")
    applied = runner.invoke(app, ["review", str(data), "--apply", "--out", str(log)])
    assert applied.exit_code == 0 and "moved 1 files" in applied.output
    (data / "a" / "y.png").write_bytes(png(70))
    reverted = runner.invoke(app, ["review", str(data), "--revert"])
    assert reverted.exit_code == 0 and "put back 0 files" in reverted.output
    assert "not undone: cannot put back a/y.png: something else is there now" in reverted.output
    shutil.rmtree(data)


def test_a_line_cut_short_by_a_kill_never_spoils_the_lines_written_after_it(tmp_path: Path) -> None:
    from imgclf.data.decisions import DecisionLog, read_decisions

    log = DecisionLog(tmp_path / "review.jsonl")
    log.append(decision("a/x.png", "relabel", "b"))
    with log.path.open("a") as handle:
        handle.write('{"item": "label-issue:a/y.png", "act')  # the review was killed here
    log.append(decision("a/y.png", "exclude"))  # the next review goes on
    assert [d.action for d in read_decisions(log.path)] == ["relabel", "exclude"]
    data = simple_world(tmp_path / "tree")
    original = snapshot(data)
    apply_to_folders(data, [decision("a/x.png", "relabel", "b")])
    with (data / REVIEW_FOLDER / "moves.jsonl").open("a") as handle:
        handle.write('{"id": 9, "op": "mo')
    apply_to_folders(data, [decision("a/y.png", "relabel", "c")])  # appends after the cut line
    assert revert_folders(data).undone == 2 and snapshot(data) == original


def test_links_planted_in_the_review_folder_write_nothing_outside(tmp_path: Path) -> None:
    data = simple_world(tmp_path)
    outside = tmp_path / "outside" / "keep.png"
    before = outside.read_bytes()
    (data / REVIEW_FOLDER).mkdir()
    for planted in ("moves.jsonl", "lock"):
        (data / REVIEW_FOLDER / planted).symlink_to(outside)
        with pytest.raises(DataError, match="move it away first"):
            apply_to_folders(data, [decision("a/x.png", "relabel", "b")])
        for entry in (data / REVIEW_FOLDER).iterdir():  # the planted link, and the lock file if made
            entry.unlink()
    (data / REVIEW_FOLDER).rmdir()
    (data / REVIEW_FOLDER).symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DataError, match="move it away first"):
        apply_to_folders(data, [decision("a/x.png", "exclude")])
    assert outside.read_bytes() == before and sorted(p.name for p in (tmp_path / "outside").iterdir()) == [
        "deep",
        "keep.png",
    ]
