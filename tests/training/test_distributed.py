"""torchrun + DistributedDataParallel on CPU with gloo: two processes train like one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

import imgclf

HELPERS = Path(__file__).parent / "helpers"
SETTINGS = ["--model", "cnn-small", "--epochs", "4", "--batch-size", "16", "--lr", "0.003"]


def _imgclf(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgclf", *args], capture_output=True, text=True, timeout=timeout
    )


def _history(run_dir: Path) -> list[dict]:
    return torch.load(run_dir / "last.pt", weights_only=True)["history"]


def test_two_processes_match_one_and_write_one_model(shapes_dir: Path, tmp_path: Path) -> None:
    single = imgclf.train(
        shapes_dir,
        model="cnn-small",
        epochs=4,
        batch_size=16,
        lr=0.003,
        test_split=0.2,
        project=str(tmp_path / "runs"),
        name="one",
    )
    result = _imgclf(
        "train",
        str(shapes_dir),
        *SETTINGS,
        "--test-split",
        "0.2",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        "two",
        "--devices",
        "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["one", "two"]  # one run folder, one artifact, for both ranks
    two = tmp_path / "runs" / "two"
    assert len(list(two.rglob("model.safetensors"))) == 1
    history = _history(two)
    assert len(history) == 4, history
    # each validation image counted exactly once
    assert all(row["val_count"] == 24 for row in history), history
    metrics = imgclf.load_model(two / "model").info.metrics
    # rank 0 alone evaluates the test split
    assert metrics["test_count"] == 24 and metrics["test_acc"] >= 0.85, metrics
    accuracy_two = metrics["val_acc"]
    assert accuracy_two >= 0.85 and abs(accuracy_two - single.metrics["val_acc"]) <= 0.1, (
        accuracy_two,
        single.metrics,
        metrics,
    )


def test_a_dying_rank_stops_the_run_and_resume_completes_it(shapes_dir: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(HELPERS / "ddp_kill.py"),
            str(shapes_dir),
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode != 0
    assert time.perf_counter() - started < 120  # the survivor does not hang
    run_dir = tmp_path / "runs" / "killed"
    assert len(_history(run_dir)) == 1  # epoch 1 finished and was saved; epoch 2 was cut short
    resumed = _imgclf("train", "--resume", str(run_dir), "--devices", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [row["epoch"] for row in _history(run_dir)] == [1, 2, 3]
    assert (run_dir / "model" / "imgclf.json").is_file()


def test_devices_must_be_positive(shapes_dir: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    result = CliRunner().invoke(app, ["train", str(shapes_dir), "--devices", "0"])
    assert result.exit_code == 2 and "--devices must be at least 1" in result.output
