"""`imgclf demo`: the whole tool end to end, offline, on generated digits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgclf.cli.app import command, handle_errors


@command("demo", rank=150)
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo data and run.")] = Path(
        "imgclf-demo"
    ),
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Training epochs.")] = 15,
) -> None:
    """Offline end-to-end demo: scikit-learn's digits as PNG folders → train → evaluate → predict."""
    from imgclf.demo import run_demo

    run_demo(out, epochs=epochs)
