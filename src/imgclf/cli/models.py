"""`imgclf models`: the networks `--model` accepts."""

from __future__ import annotations

from typing import Annotated

import typer

from imgclf.cli.app import command, handle_errors


@command("models", rank=130)
@handle_errors
def models(
    pattern: Annotated[str | None, typer.Argument(help="Filter, e.g. 'resnet*' or 'builtin'.")] = None,
) -> None:
    """List the models `--model` accepts: imgclf's builtins, then timm architectures."""
    from imgclf import api
    from imgclf.console import console

    rows = api.list_models(pattern)
    for name, description in rows:
        console.print(f"{name:<36} {description}", markup=False)
    if pattern is None:
        console.print(f"({len(rows)} models; filter with e.g. `imgclf models 'resnet*'`)")
