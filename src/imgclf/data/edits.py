"""Changes to a user's data folder: the one place where imgclf moves, copies or removes anything in it.

`review --apply` and `--revert` go through `FolderEdits`, and so must anything later that changes a
data folder. What it promises, whatever the input and wherever the process is killed:

- **Inside the folder.** Every source and target is checked before the first file moves: relative,
  no `..`, no empty part, no NUL, and once resolved (symlinks too) inside the folder.
- **Nothing overwritten.** A file is renamed with a call that refuses an existing target
  (`renameat2(RENAME_NOREPLACE)` on Linux, else a hard link then an unlink), into a free name
  chosen in a loop.
- **A journal.** Each change is appended to `<folder>/.imgclf-review/moves.jsonl` and flushed
  before it is made, and marked done after. The next `FolderEdits` on the folder reads the journal
  first and settles what a killed process left in flight (from what is on disk), so that every file
  is present exactly once.
- **Undone exactly.** `revert` undoes only what the journal says was done, the latest first: a moved
  file goes back where it was (unless something is there now, or the file changed), a copy is
  removed only while its bytes are unchanged, and a folder only if the journal says it was made and
  it is empty. What cannot be undone is said, with why, and stays in the journal for a later try;
  once nothing is left the journal and the review folder go, and the tree is as it was.
- **One at a time.** A lock file in the review folder keeps two processes from interleaving.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imgclf.data import safe_files
from imgclf.data.safe_files import (
    _copy_exclusive,
    _digest_or_none,
    _free_name,
    _identity,
    _same_file,
    cut_short,
    file_digest,
    relative_problem,
    resolved_inside,
)
from imgclf.errors import DataError, UsageError
from imgclf.io import fsync_path

REVIEW_FOLDER = ".imgclf-review"  # inside a reviewed class-folder tree: hidden, so never a class
JOURNAL_FILE = "moves.jsonl"
LOCK_FILE = "lock"
TEMP_PREFIX = ".imgclf-copy-"  # a copy being written: hidden, so never read as an image

# a test's hook, called with a short name at each step that changes the disk (fault injection)
_step_hook: Any = None


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


# --------------------------------------------------------------------------------------------------
# names and paths
# --------------------------------------------------------------------------------------------------
def rename_no_replace(source: Path, target: Path) -> None:
    """`safe_files.rename_no_replace`, with the step between its link and unlink marked for the
    fault tests."""
    safe_files.rename_no_replace(source, target, on_link=lambda: _step("linked"))


@dataclass
class Change:
    """One change in the journal: `op` mkdir (path in `target`), move (relative source and target)
    or copy (an absolute source copied to a relative target through `temp`)."""

    id: int
    op: str
    target: str
    source: str = ""
    temp: str = ""
    sha256: str = ""
    identity: list[int] = field(default_factory=list)  # inode, size, mtime of the file moved
    state: str = "planned"  # planned → done | abandoned; done → undoing → undone | done; kept


@dataclass
class RevertResult:
    undone: int = 0
    kept: list[str] = field(default_factory=list)  # one line each: what was not undone, and why


class FolderEdits:
    """A data folder opened for changes: `with FolderEdits(root) as edits:` holds its lock and has
    settled what an earlier, killed process left in flight; `move`, `copy_in` and `revert` change it."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder")
        self.root = root.resolve()
        self.folder = self.root / REVIEW_FOLDER
        self.journal = self.folder / JOURNAL_FILE
        self.changes: dict[int, Change] = {}
        self.settled: list[str] = []  # what the journal said was in flight, and how it ended
        self._lock: int | None = None
        self._journal: Any = None  # the open journal, appended to
        self._touched: set[Path] = set()  # folders whose entries changed: flushed to disk on closing
        self._folders_inside: dict[Path, bool] = {}  # folder → whether it resolves inside the root

    # -- opening and closing ------------------------------------------------------------------------
    def __enter__(self) -> FolderEdits:
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise DataError(f"{self.folder} is not a folder imgclf made; move it away first")
        self._lock = _acquire_lock(self.folder, self.root)
        try:
            self._read()
            self._settle()
        except BaseException:
            if not os.path.lexists(self.journal):
                self._tidy()  # the lock file and the folder, when made just now
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for folder in self._touched:  # the renames, durable against a power loss too
                fsync_path(folder)
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if not self.live():
                self._tidy()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def _tidy(self) -> None:
        """Nothing is left to undo: the journal, the lock and the review folder go (if nothing else
        is in it), so that the folder is exactly as it was before the first change."""
        self.journal.unlink(missing_ok=True)
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty
        fsync_path(self.root)

    # -- the journal ----------------------------------------------------------------------------------
    def _read(self) -> None:
        if self.journal.is_symlink() or (self.journal.exists() and not self.journal.is_file()):
            raise DataError(f"{self.journal} is not a file imgclf wrote; move it away first")
        if not self.journal.is_file():
            return
        cut_short(self.journal)
        lines = self.journal.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if "op" in entry:
                    fields = {k: entry[k] for k in Change.__dataclass_fields__ if k in entry and k != "state"}
                    change = Change(**fields)
                    self._check_entry(change)
                    self.changes[int(entry["id"])] = change
                elif "state" in entry:
                    change = self.changes[int(entry["id"])]
                    change.state = str(entry["state"])
                    if "identity" in entry:
                        change.identity = list(entry["identity"])
                elif "source" in entry and "target" in entry:  # a move recorded by an earlier imgclf
                    number_id = len(self.changes) + 1
                    change = Change(number_id, "move", str(entry["target"]), str(entry["source"]))
                    self._check_entry(change)
                    self.changes[number_id] = change
                else:
                    raise KeyError("op")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                if number == len(lines):  # the line being written when the process was killed
                    break
                raise DataError(f"{self.journal}:{number} is not an imgclf change ({error})") from error
            except DataError as error:
                raise DataError(f"{self.journal}:{number}: {error}; nothing was changed") from None

    def _check_entry(self, change: Change) -> None:
        """A journal is a file in the data folder, which anyone may have shipped: each path it names
        must keep the path rules (a copy's source is only ever read)."""
        if change.op not in ("mkdir", "move", "copy"):
            raise DataError(f"unknown change {change.op!r}")
        problem = relative_problem(change.target)
        if problem is None and change.op == "move":
            problem = relative_problem(change.source)
        if problem is None and change.op == "copy":
            problem = relative_problem(change.temp)
            if problem is None and not PurePosixPath(change.temp).name.startswith(TEMP_PREFIX):
                problem = "a copy's temporary name is imgclf's own"
        if problem is not None:
            raise DataError(f"{change.op} {change.source or change.target!r}: {problem}")

    def _append(self, entry: dict[str, Any], durable: bool) -> None:
        """One journal line, written through at once (a killed process loses nothing written);
        `durable` also flushes it to disk before the change it announces is made (a power loss)."""
        if self._journal is None:
            fresh = not self.journal.exists()
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            self._journal = open(os.open(self.journal, flags, 0o666), "a", encoding="utf-8")  # noqa: SIM115
            if fresh:
                fsync_path(self.folder)
        self._journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._journal.flush()
        if durable:
            os.fsync(self._journal.fileno())

    def _record(self, change: Change) -> Change:
        entry = {k: v for k, v in change.__dict__.items() if v not in ("", []) and k != "state"}
        self._append(entry, durable=True)
        self.changes[change.id] = change
        _step(f"recorded {change.op}")
        return change

    def _mark(self, change: Change, state: str, **extra: Any) -> None:
        """A change's new state; "undoing" announces an undo, so it is flushed to disk like a record
        (the others say what is on disk already: the next run finds it out if they are lost)."""
        self._append({"id": change.id, "state": state, **extra}, durable=state == "undoing")
        change.state = state
        for key, value in extra.items():
            setattr(change, key, value)
        _step(f"marked {state}")

    def _next_id(self) -> int:
        return max(self.changes, default=0) + 1

    def live(self) -> list[Change]:
        """The changes done and not undone (what `revert` would undo), in the order they were made."""
        return [c for _, c in sorted(self.changes.items()) if c.state == "done"]

    def moved_from(self) -> dict[str, str]:
        """Source → target of every move in force: files that earlier applies moved."""
        return {c.source: c.target for c in self.live() if c.op == "move"}

    # -- settling what a killed process left ----------------------------------------------------------
    def _outside(self, change: Change) -> str | None:
        """Which of the change's paths leads outside the data folder now (through a symbolic link
        made since), or None."""
        names = [change.target]
        names += [change.source] if change.op == "move" else [change.temp] if change.op == "copy" else []
        return next((name for name in names if not self.inside(self.root / name)), None)

    def inside(self, path: Path) -> bool:
        """`resolved_inside(root, path)`, each folder resolved once per session (10,000 moves would
        otherwise resolve every folder of every path 50,000 times); a file that is itself a
        symbolic link is resolved each time."""
        folder = path.parent
        known = self._folders_inside.get(folder)
        if known is None:
            known = self._folders_inside[folder] = resolved_inside(self.root, folder)
        return known and (not path.is_symlink() or resolved_inside(self.root, path))

    def _settle(self) -> None:
        for change in list(self.changes.values()):
            outside = self._outside(change)
            if outside is not None and change.state in ("planned", "undoing"):
                self.settled.append(f"left alone: {outside} leads outside the data folder now")
            elif change.state == "planned":
                self._settle_planned(change)
            elif change.state == "undoing":
                self._settle_undoing(change)

    def _settle_planned(self, change: Change) -> None:
        target = self.root / change.target
        if change.op == "mkdir":
            self._mark(change, "done" if target.is_dir() else "abandoned")
        elif change.op == "move":
            source = self.root / change.source
            if target.exists() and source.exists() and _same_file(source, target):
                os.unlink(source)  # a link made, its unlink not: finish it
                self._touched.add(source.parent)
                self._mark(change, "done", identity=_identity(target))
            elif os.path.lexists(target) and not os.path.lexists(source):
                self._mark(change, "done", identity=_identity(target))
            else:
                self._mark(change, "abandoned")
            self.settled.append(f"{change.source} → {change.target}: {change.state}")
        elif change.op == "copy":
            temp = self.root / change.temp
            if os.path.lexists(temp):
                if os.path.lexists(target) and _same_file(temp, target):
                    os.unlink(temp)
                    self._mark(change, "done", identity=_identity(target))
                else:
                    os.unlink(temp)  # a copy half written: only imgclf makes these names
                    self._mark(change, "abandoned")
                self._touched.add(temp.parent)
            elif os.path.lexists(target) and _digest_or_none(target) == change.sha256:
                self._mark(change, "done", identity=_identity(target))
            else:
                self._mark(change, "abandoned")
            self.settled.append(f"copy to {change.target}: {change.state}")

    def _settle_undoing(self, change: Change) -> None:
        target = self.root / change.target
        if change.op == "mkdir":
            self._mark(change, "undone" if not target.exists() else "done")
        elif change.op == "move":
            source = self.root / change.source
            if source.exists() and target.exists() and _same_file(source, target):
                os.unlink(target)
                self._touched.add(target.parent)
                self._mark(change, "undone")
            elif os.path.lexists(source) and not os.path.lexists(target):
                self._mark(change, "undone")
            else:
                self._mark(change, "done")
        elif change.op == "copy":
            self._mark(change, "undone" if not os.path.lexists(target) else "done")

    # -- changes ----------------------------------------------------------------------------------------
    def check_inside(self, relative: str, what: str, own_folder: bool = False) -> Path:
        """root/relative, when `relative` keeps the path rules and resolves inside the root (and,
        unless `own_folder`, outside the review folder); else a DataError that starts with `what`."""
        problem = relative_problem(relative)
        if problem is None and not self.inside(self.root / relative):
            problem = "it leads outside the data folder (through a symbolic link)"
        if problem is None and not own_folder and relative.split("/")[0] == REVIEW_FOLDER:
            problem = f"{REVIEW_FOLDER} is imgclf's own folder"
        if problem is not None:
            raise DataError(f"{what} {relative!r}: {problem}")
        return self.root / relative

    def make_folders(self, relative: PurePosixPath) -> None:
        """Make the folder `relative` (and its missing parents), each recorded as made."""
        current = PurePosixPath()
        for part in relative.parts:
            current = current / part
            path = self.root / current
            if path.is_dir():
                if not self.inside(path):
                    raise DataError(f"{current} leads outside the data folder (through a symbolic link)")
                continue
            change = self._record(Change(self._next_id(), "mkdir", current.as_posix()))
            try:
                os.mkdir(path)
            except FileExistsError:
                self._mark(change, "abandoned")
                if not path.is_dir():
                    raise DataError(f"{current} is a file, not a folder") from None
                continue
            self._touched.add(path.parent)
            self._mark(change, "done")

    def move(self, source: str, target: str, digest: str = "") -> str:
        """Move root/source to root/target, or to a free name beside it (`stem-<first 8 of its
        digest>`, then numbered), never over anything; returns the target used (relative).
        `digest`: the file's `file_digest` when the caller has it."""
        source_path = self.check_inside(source, "move")
        wanted = PurePosixPath(target)
        self.check_inside(target, "move to", own_folder=True)
        self.make_folders(wanted.parent)
        identity = _identity(source_path)
        digest = digest or file_digest(source_path)
        tag = digest[:8]
        for attempt in range(10_000):
            chosen = _free_name(wanted, tag, attempt)
            if os.path.lexists(self.root / chosen):
                continue
            change = self._record(
                Change(self._next_id(), "move", chosen.as_posix(), source, sha256=digest, identity=identity)
            )
            try:
                rename_no_replace(source_path, self.root / chosen)
            except FileExistsError:
                self._mark(change, "abandoned")  # taken since it was looked at: the next name
                continue
            except BaseException:
                if os.path.lexists(source_path) and not os.path.lexists(self.root / chosen):
                    self._mark(change, "abandoned")
                raise
            _step("renamed")
            self._touched.add((self.root / chosen).parent)
            self._touched.add(source_path.parent)
            self._mark(change, "done", identity=_identity(self.root / chosen))
            return chosen.as_posix()
        raise DataError(f"no free name for {target}")

    def copy_in(self, source: str | Path, target: str) -> str:
        """Copy the file `source` (from anywhere) to root/target, or to a free name beside it (as
        `move` names it), never over anything; returns the target used (relative)."""
        wanted = PurePosixPath(target)
        self.check_inside(target, "copy to")
        self.make_folders(wanted.parent)
        digest = file_digest(source)
        tag = digest[:8]
        for attempt in range(10_000):
            chosen = _free_name(wanted, tag, attempt)
            if os.path.lexists(self.root / chosen):
                continue
            change_id = self._next_id()
            temp = wanted.parent / f"{TEMP_PREFIX}{change_id}"
            change = self._record(
                Change(change_id, "copy", chosen.as_posix(), str(source), temp.as_posix(), digest)
            )
            temp_path = self.root / temp
            copied = _copy_exclusive(Path(source), temp_path)
            _step("copied")
            if copied != digest:
                os.unlink(temp_path)
                self._mark(change, "abandoned")
                raise DataError(f"{source} changed while it was copied; nothing was added")
            try:
                rename_no_replace(temp_path, self.root / chosen)
            except FileExistsError:
                os.unlink(temp_path)
                self._mark(change, "abandoned")
                continue
            _step("renamed")
            self._touched.add(temp_path.parent)
            self._mark(change, "done", identity=_identity(self.root / chosen))
            return chosen.as_posix()
        raise DataError(f"no free name for {target}")

    def revert(self) -> RevertResult:
        """Undo every change in force, the latest first (see the module docstring)."""
        result = RevertResult()
        for change in reversed(self.live()):
            reason = self._undo(change)
            if reason is None:
                result.undone += change.op != "mkdir"
            elif reason:
                result.kept.append(reason)
        return result

    def _undo(self, change: Change) -> str | None:
        """Undo one change; None when undone, else why not."""
        outside = self._outside(change)
        if outside is not None:
            return f"left {change.target} alone: {outside} leads outside the data folder now"
        target = self.root / change.target
        if change.op == "mkdir":
            if not target.is_dir() or target.is_symlink():
                self._mark(change, "undone")
                return None
            if any(target.iterdir()):
                return f"kept the folder {change.target}, which imgclf made: it is not empty"
            self._remove(change, target, os.rmdir)
            return None
        if change.op == "copy":
            if not os.path.lexists(target):
                self._mark(change, "undone")
                return None
            if not _unchanged(target, change):
                self._mark(change, "kept")
                return f"kept {change.target}: the copy has changed since it was added"
            self._remove(change, target, os.unlink)
            return None
        source = self.root / change.source
        if not os.path.lexists(target):
            return f"cannot put back {change.source}: {change.target} is gone"
        if os.path.lexists(source):
            return f"cannot put back {change.source}: something else is there now"
        if not _unchanged(target, change):
            return f"cannot put back {change.source}: {change.target} is another file now"
        self._mark(change, "undoing")
        source.parent.mkdir(parents=True, exist_ok=True)  # a folder of the original tree
        try:
            rename_no_replace(target, source)
        except FileExistsError:
            self._mark(change, "done")
            return f"cannot put back {change.source}: something else is there now"
        _step("renamed back")
        self._touched.add(source.parent)
        self._touched.add(target.parent)
        self._mark(change, "undone")
        return None

    def _remove(self, change: Change, path: Path, remove: Any) -> None:
        """Undo a mkdir or a copy: `remove(path)` (rmdir, unlink) between "undoing" and "undone"."""
        self._mark(change, "undoing")
        remove(path)
        self._touched.add(path.parent)
        self._mark(change, "undone")


def _unchanged(path: Path, change: Change) -> bool:
    """The file at `path` is the one the change left there: the same inode, size and time, or the
    same bytes."""
    try:
        if change.identity and _identity(path) == list(change.identity):
            return True
    except OSError:
        return False
    return bool(change.sha256) and _digest_or_none(path) == change.sha256


def write_new_file(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, or to `stem-2`, `stem-3` … beside it when taken, never over a file:
    written whole to a hidden temporary name first, flushed, then renamed without replacing.
    Returns the path written."""
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        os.write(handle, data)
        os.fsync(handle)
    finally:
        os.close(handle)
    try:
        for attempt in range(1, 10_000):
            chosen = path if attempt == 1 else path.with_name(f"{path.stem}-{attempt}{path.suffix}")
            try:
                rename_no_replace(temp, chosen)
            except FileExistsError:
                continue
            fsync_path(path.parent)
            return chosen
        raise DataError(f"no free name beside {path}")
    finally:
        temp.unlink(missing_ok=True)


def _acquire_lock(folder: Path, root: Path) -> int:
    """An exclusive lock on the review folder's lock file (both made when missing), or a UsageError
    when another process holds it."""
    path = folder / LOCK_FILE
    for _ in range(10):
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            fsync_path(root)
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileNotFoundError:  # the folder went with another process's tidying: again
            continue
        except OSError as error:  # ELOOP: a symbolic link where the lock file belongs
            raise DataError(
                f"{path} is not a file imgclf made ({error.strerror}); move it away first"
            ) from None
        try:
            _lock(handle)
        except BlockingIOError:
            os.close(handle)
            raise UsageError(
                f"another imgclf process is changing {root} (review --apply or --revert); "
                "let it finish, then try again"
            ) from None
        try:  # the file may have been removed by the holder as it finished: lock the new one
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)
    raise UsageError(f"cannot lock {path}")


def _lock(handle: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
    else:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
