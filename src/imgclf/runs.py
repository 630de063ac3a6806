"""Run folders: runs/<name>, then runs/<name>-2, runs/<name>-3 … — never overwritten."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.csv"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
MODEL_DIR = "model"
CHECKPOINT_FILE = "last.pt"
PROBLEMS_FILE = "skipped_files.csv"
SUMMARY_FILE = "summary.txt"
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
