"""Where a run's time goes: its phases (start-up, scan, decode and cache, features, head, each epoch,
calibration, final evaluation, writing), timed as they happen, written into the run folder as
phases.csv, printed with -v, and handed back with the run (`Run.phases`) for the benchmarks.

For a run of the command line, start-up is the time from the process's start (the interpreter,
imports, the command line) to the first step of training, read from /proc where there is one; from
Python (a notebook) the table starts with the run. What no phase accounts for is the `other` row, so
the rows add up to the run's wall time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from imgclf.io import write_text_atomic

logger = logging.getLogger(__name__)

PHASES_FILE = "phases.csv"
_command_line = False  # set by the command line: its process exists for this run, start-up counts


def count_start_up() -> None:
    """Called by `imgclf`'s command line: the process's age at the run's start is its start-up."""
    global _command_line
    _command_line = True


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat against the boot clock), or None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time after boot
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Phases:
    """Named phases in the order they ran, with their seconds; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.rows: dict[str, float] = {}
        self.began = time.perf_counter()
        global _command_line
        age, _command_line = (process_seconds() if _command_line else None), False  # once per command
        self.before = age if age is not None else 0.0  # the process's age when the run began
        if age is not None:
            self.rows["start-up (interpreter, imports, command line)"] = age

    def add(self, name: str, seconds: float) -> None:
        self.rows[name] = self.rows.get(name, 0.0) + max(seconds, 0.0)

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add_epochs(self, history: list[dict[str, float]], fit_seconds: float, head_seconds: float) -> None:
        """Each training epoch's row (training and validation), and what the loop spent between them
        (checkpoints, logs, the stop rules)."""
        epochs = [row for row in history if row.get("stage") != "head" and "seconds" in row]
        for row in epochs:
            self.add(f"epoch {int(row['epoch'])}", float(row["seconds"]))
        between = fit_seconds - head_seconds - sum(float(row["seconds"]) for row in epochs)
        if epochs or between > 0.05:
            self.add("between epochs (checkpoints, logs, stop rules)", between)

    def table(self) -> list[tuple[str, float]]:
        """The rows, then `other` (the wall time no phase accounts for) and the total."""
        total = self.before + time.perf_counter() - self.began
        rows = list(self.rows.items())
        rows.append(("other", max(total - sum(self.rows.values()), 0.0)))
        return [*rows, ("total", total)]

    def text(self) -> str:
        rows = self.table()
        total = rows[-1][1] or 1.0
        width = max(len(name) for name, _ in rows)
        lines = [f"{'phase':<{width}}  {'seconds':>8}  {'share':>6}"]
        lines += [f"{name:<{width}}  {seconds:>8.1f}  {seconds / total:>6.1%}" for name, seconds in rows]
        return "\n".join(lines)

    def write(self, folder: Path) -> list[tuple[str, float]]:
        """phases.csv in the run folder (phase,seconds), logged at debug level (-v); the rows."""
        rows = self.table()
        write_text_atomic(
            folder / PHASES_FILE,
            "phase,seconds\n" + "".join(f'"{name}",{seconds:.3f}\n' for name, seconds in rows),
        )
        logger.debug("where the time went:\n%s", self.text())
        return rows
