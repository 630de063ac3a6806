"""The `imgclf` command in-process: train → predict → evaluate, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO_ROOT, write_class_folders
from imgclf.cli import app
from imgclf.config import settings

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One small model trained through the CLI, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    data = write_class_folders(root / "data", ["square", "disc", "cross"], 30)
    label_map = root / "names.json"
    label_map.write_text(json.dumps({"1": "Cross shape", "2": "Disc shape", "3": "Square shape"}))
    result = invoke(
        "train",
        data,
        "--model",
        "cnn-small",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--test-split",
        "0.2",
        "--project",
        root / "runs",
        "--name",
        "cli",
        "--label-map",
        label_map,
        "--rotation",
        "5",
        "--width-shift",
        "0.05",
    )
    assert result.exit_code == 0, result.output
    assert "Total params" in result.output and "epoch 3/3" in result.output
    assert "test_acc" in result.output
    return root / "runs" / "cli", data


def test_predict_table_csv_and_jsonl(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = trained
    result = invoke("predict", run_dir / "model", data / "disc" / "disc_000.png", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "Disc shape" in result.output  # display names from the training label map
    out_csv = tmp_path / "out.csv"
    result = invoke("predict", run_dir, data, "--output", out_csv, "--top-k", "3")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 90 and set(rows[0]) >= {"path", "label_1", "prob_1", "label_3", "error"}
    correct = sum(r["label_1"] == Path(r["path"]).parent.name for r in rows)
    assert correct / len(rows) > 0.85
    out_jsonl = tmp_path / "out.jsonl"
    pattern = str(data / "square" / "*.png")
    result = invoke("predict", run_dir, pattern, "--output", out_jsonl, "-k", "1")
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(lines) == 30 and len(lines[0]["predictions"]) == 1


def test_predict_reports_unreadable_files_and_exits_1(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    out_csv = tmp_path / "mixed.csv"
    result = invoke(
        "predict",
        run_dir,
        data / "cross" / "cross_001.png",
        broken,
        tmp_path / "absent.png",
        "--output",
        out_csv,
    )
    assert result.exit_code == 1
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out_csv.open())}
    assert rows["cross_001.png"]["error"] == ""
    assert rows["broken.jpg"]["error"] and rows["absent.png"]["error"] == "file not found"


def test_predict_with_a_label_map_override(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = trained
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"cross": "X", "disc": "O", "square": "[]"}))
    result = invoke(
        "predict", run_dir, data / "disc" / "disc_002.png", "--label-map", names, "-o", tmp_path / "p.jsonl"
    )
    line = json.loads((tmp_path / "p.jsonl").read_text())
    assert result.exit_code == 0 and line["predictions"][0]["name"] == "O"


def test_evaluate_on_the_runs_test_split(trained: tuple[Path, Path]) -> None:
    run_dir, data = trained
    result = invoke("evaluate", run_dir, data, "--manifest", run_dir / "manifest.csv", "--split", "test")
    assert result.exit_code == 0, result.output
    assert "18 images (test)" in result.output and "accuracy" in result.output


def test_resume_a_finished_run_with_more_epochs(trained: tuple[Path, Path]) -> None:
    run_dir, _ = trained
    result = invoke("train", "--resume", run_dir, "--epochs", "4")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 3" in result.output and "epoch 4/4" in result.output
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "/no/such/folder"], "data not found"),
        (["train", "{data}", "--model", "resnet1888"], "unknown model 'resnet1888'"),
        (["train", "{data}", "--optimizer", "adagrad"], "train.optimizer must be one of"),
        (["train", "{data}", "--val-split", "1.5"], "fractions between 0 and 1"),
        (["predict", "/no/model", "x.png"], "model not found"),
        (["train", "--resume", "/no/run"], "not a run folder"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(
    trained: tuple[Path, Path], args: list[str], message: str
) -> None:
    _, data = trained
    result = runner.invoke(app, [a.replace("{data}", str(data)) for a in args])
    assert result.exit_code == 2, result.output
    assert not Path("runs").exists()  # a usage error leaves no run folder behind
    assert message in result.output
    assert "Traceback" not in result.output


def test_empty_class_is_a_data_error(tmp_path: Path) -> None:
    data = write_class_folders(tmp_path / "data", ["a", "b"], 4)
    (data / "c").mkdir()
    result = runner.invoke(app, ["train", str(data), "--project", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "class 'c' has no usable image" in result.output


def test_models_lists_builtins_and_timm() -> None:
    result = invoke("models", "cnn*")
    assert result.exit_code == 0 and "cnn-basic" in result.output
    assert "resnet18" in invoke("models", "resnet1*").output


def test_augment_preview_writes_a_grid(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    _, data = trained
    out = tmp_path / "grid.png"
    result = invoke(
        "augment-preview",
        data,
        "--out",
        out,
        "--rotation",
        "30",
        "--zoom",
        "0.2",
        "--rows",
        "3",
        "--variants",
        "4",
    )
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.width > image.height  # 5 columns, 3 rows


def test_help_documents_every_train_option() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    for flag in (
        "--width-shift",
        "--zoom",
        "--hflip",
        "--fill",
        "--schedule",
        "--patience",
        "--resume",
        "--manifest",
        "--label-map",
        "--class-weight",
        "--monitor",
        "--splits",
        "--recipe",
        "--time-limit",
    ):
        assert flag in result.output
    assert "[default: cosine]" in result.output and "[default: 64]" in result.output  # from config.py
    assert "[default: plain 2e-3, transfer 1e-3]" in result.output  # the recipes' own


TRAIN_OWN_FLAGS = {"--config", "--resume", "--devices"}  # not settings: how the command runs


def test_help_and_readme_list_exactly_the_configs_settings() -> None:
    """Each setting is declared once, in imgclf.config; --help and the README's option table follow."""
    declared = {item.flag for item in settings()}
    assert len(declared) == len(settings()) > 60
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output
    in_help = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text)) - {"--help"}
    negatives = {item.negative for item in settings() if item.negative}  # --single-label
    in_help = {flag for flag in in_help if not flag.startswith("--no-")} - negatives
    assert in_help == declared | TRAIN_OWN_FLAGS
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| group | flags |") :].split("\n\n", 1)[0]
    in_table = {flag for flag in re.findall(r"--[a-z][a-z0-9-]*", table) if not flag.startswith("--no-")}
    in_table -= negatives
    assert in_table == declared | {"--resume", "--devices"}
    for item in settings():  # every choice is described where the flag is
        assert all(str(choice) in item.help for choice in item.choices if choice is not None), item.key


def test_sharded_prediction_equals_unsharded(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = trained
    whole = tmp_path / "whole.csv"
    assert invoke("predict", run_dir, data, "-o", whole).exit_code == 0
    parts = []
    for index in (1, 2):
        part = tmp_path / f"part{index}.csv"
        assert invoke("predict", run_dir, data, "-o", part, "--shard", f"{index}/2").exit_code == 0
        parts += list(csv.DictReader(part.open()))
    rows = list(csv.DictReader(whole.open()))
    assert len(parts) == len(rows) == 90
    assert sorted(parts, key=lambda r: r["path"]) == sorted(rows, key=lambda r: r["path"])
    assert runner.invoke(app, ["predict", str(run_dir), str(data), "--shard", "3/2"]).exit_code == 2


def test_resume_continues_an_interrupted_prediction_job(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = trained
    full = tmp_path / "full.jsonl"
    assert invoke("predict", run_dir, data, "-o", full).exit_code == 0
    lines = full.read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:40]) + lines[40][:25])  # stopped in the middle of line 41
    result = invoke("predict", run_dir, data, "-o", partial, "--resume")
    assert result.exit_code == 0 and "40 images already" in result.output
    assert partial.read_text() == full.read_text()
    # CSV too, and a finished job resumed again adds nothing
    out_csv = tmp_path / "p.csv"
    assert invoke("predict", run_dir, data, "-o", out_csv).exit_code == 0
    before = out_csv.read_text()
    assert invoke("predict", run_dir, data, "-o", out_csv, "--resume").exit_code == 0
    assert out_csv.read_text() == before
