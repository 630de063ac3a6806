"""The README's quick start is what CI runs: the two must not drift apart."""

from __future__ import annotations

from conftest import REPO_ROOT


def test_ci_runs_the_readme_setup_and_test_commands() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci_lines = [
        line.strip()
        for line in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert len(ci_lines) == 3
    for line in ci_lines:
        assert line in readme, f"README lacks the CI command: {line}"
