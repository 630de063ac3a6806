"""The `imgclf` application: its global options, and how a command's errors reach the terminal.

A user mistake (an `ImgclfError`) prints one line on stderr and exits non-zero; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from imgclf.errors import ImgclfError

app = typer.Typer(
    name="imgclf",
    help="From a folder of labelled images to a trained, evaluated image classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)
_options = {"debug": False}


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from imgclf.console import err_console

    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("imgclf")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _version(value: bool) -> None:
    if value:
        from imgclf.version import __version__

        typer.echo(f"imgclf {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log messages.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    archive_budget_gb: Annotated[
        float | None,
        typer.Option(
            envvar="IMGCLF_ARCHIVE_BUDGET_GB",
            help="Most an archive given as data may unpack to (GB) \\[default: 50× its size, at least "
            "256 MiB; never over half the free disk].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """imgclf: train, evaluate and use image classifiers."""
    _options["debug"] = debug
    from imgclf.console import started_from_command_line

    started_from_command_line()  # a run's phase table counts this process's start-up
    if archive_budget_gb is not None:
        if archive_budget_gb <= 0:
            raise typer.BadParameter("must be above 0", param_hint="--archive-budget-gb")
        # read where archives are unpacked, in this process and in the ones `train --devices` starts
        os.environ["IMGCLF_ARCHIVE_BUDGET_GB"] = repr(archive_budget_gb)
    _setup_logging(verbose)


def handle_errors(command: Callable) -> Callable:
    """Turn ImgclfError into one line on stderr and its exit code; Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from imgclf.console import err_console

        try:
            return command(*args, **kwargs)
        except ImgclfError as error:
            if _options["debug"]:
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            from rich.markup import escape  # a message may hold brackets: pip install 'imgclf[tflite]'

            err_console.print(f"[red]error:[/red] {escape(message)}", markup=True, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


_registered: list[tuple[int, str, Callable]] = []


def command(name: str, rank: int) -> Callable[[Callable], Callable]:
    """Make a function of a module in `imgclf.cli` the command `name`; `rank` orders the commands in
    `imgclf --help` (train 10, predict 20, …)."""

    def register(function: Callable) -> Callable:
        _registered.append((rank, name, function))
        return function

    return register


def register_commands() -> list[tuple[str, Callable]]:
    """Add every registered command to the application, by rank; returns (name, function) pairs."""
    chosen = [(name, function) for _, name, function in sorted(_registered, key=lambda row: row[:2])]
    for name, function in chosen:
        app.command(name)(function)
    return chosen


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interrupt outside a command
        sys.exit(130)
