"""`imgclf evaluate`, `imgclf calibrate` and `imgclf report`: a trained model measured on labelled
data, its confidence fitted, and a run's report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import (
    BATCH_SIZE,
    DATA_SOURCE,
    DEVICE,
    DataArgument,
    ModelFolderArgument,
    Split,
    TtaOption,
    shared,
    shared_values,
)


@command("evaluate", rank=70)
@handle_errors
@shared(DATA_SOURCE, BATCH_SIZE, DEVICE, batch_size=128)
def evaluate(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model folder (or a run folder holding model/), or an exported .onnx file (run with "
            "ONNX Runtime).",
            show_default=False,
        ),
    ],
    data: DataArgument,
    split: Annotated[
        Split, typer.Option(help="Which split of the data (from its folders or --manifest).")
    ] = Split.all,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the outputs. \\[default: runs/evaluate, suffixed -2, -3 …]"
        ),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="manifest.csv whose split to use (e.g. the run's).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per row in predictions.csv.")] = 5,
    tta: TtaOption = False,
    *,
    settings: dict[str, Any],
) -> None:
    """Evaluate a saved model on labelled data, with the model's own preprocessing.

    Prints the per-class table and the most-confused pairs; writes metrics.json, confusion_matrix.png,
    confusion_matrix_normalized.png, most_confused.csv, misclassified.png, predictions.csv and
    reliability.png.
    """
    from imgclf import api
    from imgclf.console import console, print_evaluation, problems_line

    evaluation = api.evaluate(
        model,
        data,
        split=split.value,
        manifest=manifest,
        out=out,
        top_k=top_k,
        tta=tta,
        **shared_values(settings, DATA_SOURCE, BATCH_SIZE, DEVICE),
    )
    print_evaluation(evaluation.metrics)
    line = problems_line(evaluation.problems, "skipped_files.csv")
    if line:
        console.print(f"[yellow]{line}[/yellow]")
    console.print(f"[bold]outputs[/bold] {evaluation.out_dir}")


@command("calibrate", rank=80)
@handle_errors
@shared(DATA_SOURCE, BATCH_SIZE, DEVICE, batch_size=128)
def calibrate(
    model: ModelFolderArgument,
    data: Annotated[
        str | None,
        typer.Argument(
            help="Labelled data, any source `train` accepts \\[default: the data the model was trained "
            "on, split by the run's manifest.csv].",
            show_default=False,
        ),
    ] = None,
    min_precision: Annotated[
        float | None,
        typer.Option(
            help="Answer `unknown` rather than guess: the confidence threshold keeping precision ≥ P on "
            "the split, and a likeness-to-the-training-images test keeping 98% of it. Without it, only "
            "the temperature is fitted and the model always answers a class.",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        Split, typer.Option(help="The split fitted on (all: every image but the train split's).")
    ] = Split.val,
    manifest: Annotated[
        Path | None, typer.Option(help="manifest.csv whose splits to use \\[default: the run's].")
    ] = None,
    *,
    settings: dict[str, Any],
) -> None:
    """Fit a model's confidence on labelled data: its temperature and, with --min-precision, `unknown`.

    Rewrites the model's imgclf.json (and novelty.safetensors, the features of training images the
    likeness test compares with); predict, serve and evaluate use them. Export again afterwards.
    """
    from imgclf import api
    from imgclf.console import console

    report = api.calibrate(
        model,
        data,
        min_precision=min_precision,
        split=split.value,
        manifest=manifest,
        **shared_values(settings, DATA_SOURCE, BATCH_SIZE, DEVICE),
    )
    for line in calibration_lines(report):
        console.print(line, markup=False, soft_wrap=True)


def calibration_lines(report: dict[str, Any]) -> list[str]:
    """imgclf.json's `calibration` in words."""
    if not report:
        return ["no calibration: too few labelled images"]
    if report.get("task") == "multi-label":
        rule = f"precision ≥ {report['min_precision']:g}" if report.get("min_precision") else "the best F1"
        lines = [f"thresholds per label for {rule}, chosen on {report['fitted_on']}:"]
        for name, row in report["per_label"].items():
            lines.append(
                f"  {name} {row['threshold']:.3f}: precision {row['precision']:.4f}, "
                f"recall {row['recall']:.4f}"
            )
        lines.append(f"macro F1 {report['macro_f1_before']:.4f} → {report['macro_f1_after']:.4f}")
        return lines
    lines = [f"temperature {report['temperature']:.4f}, fitted on {report['fitted_on']}"]
    if report.get("note"):
        lines[0] = f"temperature 1 (none: {report['note']})"
    for key, before in report.items():
        if key.endswith("_ece_before"):
            split = key.removesuffix("_ece_before")
            lines.append(f"{split} ECE {before:.4f} → {report[f'{split}_ece_after']:.4f}")
    chosen = report.get("threshold")
    if chosen:
        from imgclf.inference.unknown import UnknownRule  # how the rule says itself

        lines.append(f"unknown when {UnknownRule.from_calibration(report).describe()}")
        lines.append(
            f"on those images: coverage {chosen['coverage']:.1%} ({chosen['answered']} of {chosen['images']} "
            f"answered), precision {chosen['precision']:.4f} (asked ≥ {chosen['min_precision']:g})"
        )
        if "test_coverage" in chosen:
            test = f"coverage {chosen['test_coverage']:.1%}, precision {chosen['test_precision']:.4f}"
            lines.append(f"test split: {test}")
    return lines


@command("report", rank=90)
@handle_errors
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder written by `imgclf train`.", show_default=False)
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file. \\[default: RUN_DIR/report.html]")
    ] = None,
) -> None:
    """Write one self-contained report.html (images embedded, opens offline) for a training run."""
    from imgclf import api
    from imgclf.console import console

    console.print(f"wrote {api.report(run_dir, out)}")
