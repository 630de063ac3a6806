"""`imgclf demo` end to end, offline: the issue's acceptance bar (test accuracy ≥ 0.95)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from imgclf.cli import app


def test_demo_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "demo" / "digits").rglob("*.png"))) == 1797
    run_dir = tmp_path / "demo" / "runs" / "demo"
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "curves.png").is_file()
    accuracy = float(result.output.split("test accuracy")[1].split()[0])
    assert accuracy >= 0.95
    assert "predictions on test images" in result.output
