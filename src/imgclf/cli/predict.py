"""`imgclf predict` and `imgclf explain`: answers and heatmaps for image files, streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import (
    BATCH_SIZE,
    DEVICE,
    Backend,
    InputsArgument,
    ModelArgument,
    ModelFolderArgument,
    TtaOption,
    shared,
    shared_values,
    with_aliases,
)


@command("predict", rank=20)
@handle_errors
@with_aliases(top_k="--top_k", label_map="--category_names")  # the tutorials' predict.py spellings
@shared(DEVICE, BATCH_SIZE, batch_size=64)
def predict(
    model: ModelArgument,
    inputs: InputsArgument,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes per image.")] = 3,
    label_map: Annotated[
        Path | None,
        typer.Option(
            help="JSON of display names (keys: class names or 1-based "
            "indices), like the tutorials' --category_names."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write rows to out.csv or out.jsonl (as they come) instead of lines."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the rows already in --output and skip their images.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: predict only every N-th input starting with the I-th (split work across machines)."
        ),
    ] = None,
    backend: Annotated[
        Backend,
        typer.Option(
            help="auto: ONNX Runtime on the CPU when the model folder holds a current model.onnx "
            "(see imgclf export), else PyTorch."
        ),
    ] = Backend.auto,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads \\[default: one per core].", show_default=False)
    ] = None,
    tta: TtaOption = False,
    *,
    settings: dict[str, Any],
) -> None:
    """Top-k predictions for images, streamed (bounded memory on folders of any size).

    MODEL is a model folder, a run folder or an exported .onnx file.
    Exit code 0: all read; 1: some could not be read; 2: usage error.
    """
    from imgclf import api
    from imgclf.console import console, err_console

    job = api.predict(
        model, inputs, top_k=top_k, output=output, resume=resume, shard=shard, backend=backend.value,
        threads=threads, tta=tta, label_map=label_map, **shared_values(settings, DEVICE, BATCH_SIZE),
    )  # fmt: skip
    mirrored = ", test-time augmentation (mirror images)" if tta else ""
    err_console.print(f"backend: {job.predictor.backend}{mirrored}", style="dim")
    if job.predictor.unknown_rule is not None:
        rule = job.predictor.unknown_rule.describe()
        err_console.print(f"answers unknown when {rule}", style="dim", soft_wrap=True)
    if job.resumed:
        err_console.print(f"resuming: {job.resumed:,} images already in {output}")
    for result in job:
        if output is None:
            console.print(prediction_line(result), markup=False, soft_wrap=True)
    if output is not None:
        failed = f" ({job.failed:,} failed)" if job.failed else ""
        err_console.print(f"wrote {job.written:,} rows to {output}{failed}")
    elif job.written == 0:
        raise typer.BadParameter("no input image found")
    if job.failed:
        raise typer.Exit(1)


def prediction_line(result: Any) -> str:
    """'path  name 0.9876  (other 0.0100, …)', 'path  unknown: why  (best guess name 0.41, …)' or
    'path  error: reason'; for a multi-label model 'path  cat 0.97, dog 0.81  (below threshold: …)'."""
    if result.error:
        return f"{result.source}  error: {result.error}"
    if result.present is not None:  # a multi-label model: every label at or above its threshold
        present = ", ".join(
            f"{n} {p:.4f}" for n, p in zip(result.present_names, result.present_probabilities)
        )
        shown = set(result.present)
        others = ", ".join(
            f"{n} {p:.4f}" for label, n, p in zip(result.labels, result.names, result.probabilities)
            if label not in shown
        )  # fmt: skip
        return f"{result.source}  {present or '(none of the labels)'}" + (
            f"  (below threshold: {others})" if others else ""
        )
    if result.unknown:
        guesses = ", ".join(f"{n} {p:.4f}" for n, p in zip(result.names, result.probabilities))
        return f"{result.source}  unknown: {result.unknown}  (best guess {guesses})"
    others = ", ".join(f"{n} {p:.4f}" for n, p in zip(result.names[1:], result.probabilities[1:]))
    return f"{result.source}  {result.names[0]} {result.probabilities[0]:.4f}" + (
        f"  ({others})" if others else ""
    )


@command("explain", rank=60)
@handle_errors
@shared(DEVICE)
def explain(
    model: ModelFolderArgument,
    inputs: InputsArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the heatmaps.")] = Path("explain"),
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="Explain this class instead of each image's top-1 class."),
    ] = None,
    *,
    settings: dict[str, Any],
) -> None:
    """Where the model looked: a Grad-CAM heatmap over each image.

    Writes NAME.gradcam.png (the image as the model saw it, and the heatmap over it) per image, and
    explanations.csv (path, class, name, probability, peak_row, peak_col, error). The heatmap is of
    the top-1 class, or of --class. Runs the PyTorch model (an export has no gradients).
    """
    from imgclf import api
    from imgclf.console import console

    job = api.explain(model, inputs, out=out, class_name=class_name, **shared_values(settings, DEVICE))
    for result, path in job:
        if path is None:
            console.print(f"{result.source}  error: {result.error}", markup=False, soft_wrap=True)
            continue
        answer = f"  (the model answers unknown: {result.unknown})" if result.unknown else ""
        console.print(
            f"{result.source}  {result.name} {result.probability:.4f}{answer}  → {path}",
            markup=False,
            soft_wrap=True,
        )
    if job.written + job.failed == 0:
        raise typer.BadParameter("no input image found")
    console.print(
        f"wrote {job.written:,} heatmaps and explanations.csv to {out}"
        + (f" ({job.failed:,} failed)" if job.failed else "")
    )
    if job.failed:
        raise typer.Exit(1)
