"""`imgclf train`: every setting of `imgclf.config` as a flag, then one `api.train` call."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import with_settings
from imgclf.config import OUTPUT_PANEL, TRAIN_PANEL


@command("train", rank=10)
@handle_errors
@with_settings(lambda item: True)
def train(
    data: Annotated[
        str | None,
        typer.Argument(
            help="Folder of class folders, folder with train/ val/ test/, CSV/TSV (one, or one per split), "
            ".zip/.tar(.gz), a Hugging Face Parquet set (data/train-*.parquet), or IDX files.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML file with settings (flags win).", rich_help_panel=OUTPUT_PANEL
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue an interrupted run folder where it stopped.", rich_help_panel=OUTPUT_PANEL
        ),
    ] = None,
    devices: Annotated[
        int | None,
        typer.Option(
            help="Train with this many processes on this machine (torchrun + DistributedDataParallel; "
            "one GPU each, or CPU processes with gloo).",
            rich_help_panel=TRAIN_PANEL,
        ),
    ] = None,
    *,
    settings: dict[str, Any],
) -> None:
    """Train a classifier on a folder, CSV, archive, Parquet set or IDX files; writes a run folder
    with the model.

    Every setting below is also a key of the YAML file given with --config (data.val_split,
    train.lr …); flags win over the file.

    Example: [bold]imgclf train data/ --model cnn-basic --width-shift 0.3 --zoom 0.2 --hflip[/bold]
    """
    from imgclf import api
    from imgclf.console import ConsoleReporter

    overrides = {"data.source": data, **settings} if data is not None else dict(settings)
    if devices is not None and devices < 1:
        raise typer.BadParameter("--devices must be at least 1")
    if devices is not None and devices > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(api.launch(devices, _without_option(sys.argv[1:], "--devices")))
    reporter = ConsoleReporter()
    if resume is not None:
        extra = {"epochs": settings["train.epochs"]} if "train.epochs" in settings else {}
        api.train(resume=resume, callbacks=[reporter], **extra)
        return
    if data is None and config is None:
        raise typer.BadParameter("give the DATA to train on (or a --config that names data.source)")
    api.train(config=config, callbacks=[reporter], **overrides)


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv with `name VALUE` / `name=VALUE` removed (to pass the rest on to torchrun)."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(f"{name}="):
            kept.append(item)
    return kept


@command("update", rank=15)
@handle_errors
def update(
    run: Annotated[
        Path, typer.Argument(help="A run folder of `imgclf train` (or its model folder).", show_default=False)
    ],
    data: Annotated[
        str | None,
        typer.Argument(
            help="Other data to read (new images, a new class) \\[default: the run's own data].",
            show_default=False,
        ),
    ] = None,
    review: Annotated[
        Path | None,
        typer.Option(help="The decisions of `imgclf review` (review.jsonl) to apply.", show_default=False),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="Train a whole new run with the run's settings, as `train` would."),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(help="The new run folder's name \\[default: RUN-update].", show_default=False),
    ] = None,
) -> None:
    """A new run with corrected labels, newly labelled images or a new class, in seconds: the run's
    network is kept and its head fitted again on the features of its own backbone.

    Says how many labels changed and the validation accuracy before and after on the same corrected
    validation split, then the summary lines `train` ends with.

    Example: [bold]imgclf review data/ --model runs/train[/bold], then
    [bold]imgclf update runs/train --review review.jsonl[/bold]
    """
    from imgclf import api
    from imgclf.console import ConsoleReporter, console

    if full:
        api.update(run, review, data, full=True, name=name, callbacks=[ConsoleReporter()])
        return
    result = api.update(run, review, data, name=name)
    new = f"; new classes: {', '.join(result.new_classes)}" if result.new_classes else ""
    console.print(
        f"{result.changed} labels changed: {result.relabelled} relabelled, {result.removed} left out, "
        f"{result.added} new images{new}",
        markup=False,
    )
    console.print(
        f"val_acc {result.val_acc_before:.4f} → {result.val_acc_after:.4f} on the same corrected validation "
        f"split ({result.val_count:,} images); {result.head} in {result.seconds:.1f} s "
        f"({result.computed:,} images through the network, the rest from the cache)",
        markup=False,
    )
    for key, value in result.metrics.items():
        if not key.endswith("_count"):
            console.print(f"{key:<10} {value:.4f}", markup=False)
    console.print(f"[bold]model[/bold] {result.artifact}")
    console.print(f"[bold]run folder[/bold] {result.run_dir}")
