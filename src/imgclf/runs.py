"""Run folders: runs/<name>, then runs/<name>-2, runs/<name>-3 … — never overwritten.

`RunFolder` names every file of a run folder and writes the run's records (config, split, skipped
files, summary, data summary), each atomically. The rest is written by what makes it, into the paths
named here: the model (`imgclf.artifact`), metrics.csv and curves.png (`MetricsLog`), last.pt
(`SaveCheckpoint`), evaluation/ and samples.png (`imgclf.evaluation`), report.html (`write_report`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.config import Config, save_config
from imgclf.data.imageset import ImageSet, Problem
from imgclf.data.split import write_manifest
from imgclf.io import write_text_atomic

if TYPE_CHECKING:
    from imgclf.data.prepared import PreparedData

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.csv"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
MODEL_DIR = "model"
CHECKPOINT_FILE = "last.pt"
PROBLEMS_FILE = "skipped_files.csv"
SUMMARY_FILE = "summary.txt"
# the epochs imgclf planned for the run (transfer), for --resume: run state, not config
PLAN_FILE = "plan.json"
EVALUATION_DIR = "evaluation"
DATASET_FILE = "dataset.json"
SAMPLES_FILE = "samples.png"
REPORT_FILE = "report.html"


def create_run_dir(project: str | Path, name: str) -> Path:
    """Create and return a new, empty run folder; the first free of name, name-2, name-3 …"""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        candidate = project / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1


def write_problems(path: Path, problems: Sequence[Problem]) -> None:
    """skipped_files.csv: every file left out (path, kind, reason); the header alone when none was."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "kind", "reason"])
    for problem in problems:
        writer.writerow([problem.path, problem.kind, problem.reason])
    write_text_atomic(path, buffer.getvalue())


@dataclass(frozen=True)
class RunFolder:
    """One training run's folder and the name of each file in it."""

    path: Path

    @classmethod
    def create(cls, project: str | Path, name: str) -> RunFolder:
        return cls(create_run_dir(project, name))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def curves(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def model(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def problems(self) -> Path:
        return self.path / PROBLEMS_FILE

    @property
    def evaluation(self) -> Path:
        return self.path / EVALUATION_DIR

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES_FILE

    def write_config(self, cfg: Config) -> None:
        save_config(cfg, self.config)

    def write_plan(self, epochs: int) -> None:
        write_text_atomic(self.path / PLAN_FILE, json.dumps({"epochs": int(epochs)}) + "\n")

    def read_plan(self) -> int | None:
        path = self.path / PLAN_FILE
        return int(json.loads(path.read_text(encoding="utf-8"))["epochs"]) if path.is_file() else None

    def write_manifest(self, image_set: ImageSet, splits: np.ndarray) -> None:
        write_manifest(self.manifest, image_set, splits)

    def write_problems(self, problems: Sequence[Problem]) -> None:
        write_problems(self.problems, problems)

    def write_summary(
        self,
        epochs: int,
        best_epoch: int | None,
        monitor: str,
        stop_reason: str,
        final: dict[str, float],
        problems: Sequence[Problem],
    ) -> None:
        """summary.txt: epochs, the best epoch, why training stopped, the final metrics."""
        lines = [f"epochs completed: {epochs}", f"best epoch: {best_epoch} ({monitor})"]
        if stop_reason:
            lines.append(stop_reason)
        lines += [f"{key}: {value:.4f}" for key, value in final.items() if not key.endswith("_count")]
        lines.append(f"skipped files: {len(problems)} (see {PROBLEMS_FILE})")
        write_text_atomic(self.path / SUMMARY_FILE, "\n".join(lines) + "\n")

    def write_dataset(self, prepared: PreparedData) -> None:
        """dataset.json: counts per split and class, image sizes and modes, the preprocessing."""
        image_set = prepared.image_set
        counts = {
            split: {
                name: int(n)
                for name, n in zip(
                    image_set.classes,
                    np.bincount(image_set.labels[prepared.splits == split], minlength=len(image_set.classes)),
                )
            }
            for split in ("train", "val", "test")
        }
        sizes: dict[str, int] = {}
        modes: dict[str, int] = {}
        for header in image_set.headers or []:
            key = f"{header.width}x{header.height}"
            sizes[key] = sizes.get(key, 0) + 1
            modes[header.mode] = modes.get(header.mode, 0) + 1
        summary = {
            "source": image_set.source,
            "layout": image_set.layout,
            "classes": image_set.classes,
            "counts": counts,
            "sizes": sizes,
            "modes": modes,
            "skipped": len(image_set.problems),
            "preprocessing": prepared.spec.to_dict(),
        }
        write_text_atomic(self.path / DATASET_FILE, json.dumps(summary, indent=2))
