"""report.html: self-contained, and rendered by a real headless Chromium with no console errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import imgclf
from conftest import CHROMIUM, CHROMIUM_FLAGS, write_class_folders
from imgclf.cli import app


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = write_class_folders(root / "data", ["square", "disc", "cross"], 20)
    (data / "disc" / "broken.png").write_bytes(b"\x89PNG broken")
    run = imgclf.train(data, model="cnn-small", epochs=2, batch_size=16, project=str(root / "runs"))
    result = CliRunner().invoke(app, ["report", str(run.run_dir)])
    assert result.exit_code == 0, result.output
    return run.run_dir / "report.html"


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)  # nothing fetched from elsewhere
    assert "<script src" not in text
    for heading in ("Dataset", "Configuration", "Training", "Evaluation", "Skipped files"):
        assert f"<h2>{heading}" in text
    assert text.count("data:image/png;base64,") >= 8


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_report_renders_in_headless_chromium(report: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    metrics = json.loads((report.parent / "evaluation" / "metrics.json").read_text())
    errors: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            shown = page.inner_text("#validation-accuracy")
            images_ok = page.evaluate(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            )
            title = page.title()
        finally:
            browser.close()
    assert errors == []
    assert shown == f"{metrics['accuracy']:.4f}"
    assert images_ok and title.startswith("imgclf report")
