"""`imgclf export`: a model to ONNX, ORT format, TFLite or a phone app, float or int8, each file checked.

Its `--batch-size` is the fixed batch of `--fixed-batch`, not the batch of a forward pass over many
images as elsewhere, so it is this command's own option."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import ModelFolderArgument
from imgclf.registry import EXPORT_FORMATS

# the formats are the modules of imgclf.export.formats, listed from their files without importing them
ExportFormat = Enum("ExportFormat", {name: name for name in EXPORT_FORMATS.names()}, type=str)  # type: ignore[misc]


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"
    auto = "auto"


# the command's own options, each declared once here
FormatOption = Annotated[
    ExportFormat,
    typer.Option(
        "--format",
        "-f",
        help=EXPORT_FORMATS.describe() + ". Core ML cannot be checked on Linux and is not offered.",
    ),
]
QuantizeOption = Annotated[
    Quantize | None,
    typer.Option(
        help="none | int8: static quantization (QDQ, per-channel weights) calibrated on training images; "
        "written only if its top-1 answers agree with the float model's on at least 99% of the "
        "validation images (or --check-images) and it loses at most 1 point of accuracy | auto: int8 "
        "where that check passes, else the float model \\[default: auto for web, none for the others].",
        show_default=False,
    ),
]
CalibrationImagesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--calibration-images",
        help="Images (files, folders, globs) to calibrate int8 on \\[default: the training split].",
        show_default=False,
    ),
]
CalibrationCountOption = Annotated[int, typer.Option(help="How many images int8 is calibrated on.")]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="The file to write, or for --format web the app's folder \\[default: in the model folder: "
        "model.onnx (where predict and serve find it), model.int8.onnx, model.ort, model.int8.ort, "
        "web/]. An existing folder is replaced only if it is empty or an app imgclf exported.",
        show_default=False,
    ),
]
OpsetOption = Annotated[int, typer.Option(help="ONNX opset version (18 or later).")]
DynamicBatchOption = Annotated[
    bool,
    typer.Option(
        "--dynamic-batch/--fixed-batch",
        help="A free batch dimension, or one fixed at --batch-size.",
    ),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", help="The batch of --fixed-batch.")]
CheckImagesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--check-images",
        help="Images (files, folders, globs) for the checks: ONNX Runtime vs PyTorch, and int8 vs float "
        "\\[default: 16 images of the training data; int8: the validation split].",
        show_default=False,
    ),
]


@command("export", rank=30)
@handle_errors
def export(
    model: ModelFolderArgument,
    format: FormatOption = ExportFormat("onnx"),
    quantize: QuantizeOption = None,
    calibration_images: CalibrationImagesOption = None,
    calibration_count: CalibrationCountOption = 256,
    out: OutOption = None,
    opset: OpsetOption = 18,
    dynamic_batch: DynamicBatchOption = True,
    batch_size: BatchSizeOption = 1,
    check_images: CheckImagesOption = None,
) -> None:
    """Export a model to ONNX (or ORT format, float or int8), with normalization and softmax inside;
    or, with --format web, a phone app: a folder any HTTPS host serves, that classifies offline.

    Input `image`: float32 N×C×H×W, RGB (or grey) pixels / 255, resized as the model's spec says.

    Output `probabilities`: float32 N×K. The metadata holds classes, names and the spec.

    Every file is checked before it is written: ONNX Runtime must match PyTorch on a real batch within
    1e-4; int8 must agree with the float model (99% top-1, at most 1 point of accuracy lost); the
    ORT format must match the ONNX graph within 1e-4. predict, serve and evaluate run any of them.
    """
    from imgclf import api
    from imgclf.console import console

    result = api.export_model(
        model,
        out,
        opset=opset,
        dynamic_batch=dynamic_batch,
        batch_size=batch_size,
        check_images=check_images,
        format=format.value,
        quantize=quantize.value if quantize is not None else None,
        calibration_images=calibration_images,
        calibration_count=calibration_count,
    )
    console.print(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.kind}, batch {result.batch})",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"check: ONNX Runtime vs PyTorch on {result.check_source}: max |Δp| = {result.max_abs_diff:.2e} "
        f"(limit 1e-04), top-1 agreement {result.top1_agreement:.0%}",
        markup=False,
        soft_wrap=True,
    )
    for line in export_check_lines(result):
        console.print(line, markup=False, soft_wrap=True)


def export_check_lines(result: Any) -> list[str]:
    """The int8 and ORT-format checks of an export, a line each."""
    lines = []
    if result.quantization is not None:
        check = result.quantization
        size = result.model_size_bytes or result.size_bytes
        ratio = result.float_size_bytes / max(size, 1)
        lines.append(
            f"int8: {size / 1e6:.1f} MB vs float {result.float_size_bytes / 1e6:.1f} MB "
            f"({ratio:.1f}x smaller); calibrated on {check.calibration_images} images; {check.describe()}"
        )
    return lines + list(result.check_lines)
