"""The `imgclf` command: parse flags → config → call the API → exit code.

A user mistake (an `ImgclfError`) prints one line on stderr and exits non-zero; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.config import (
    AUGMENT_PANEL,
    DATA_PANEL,
    MODEL_PANEL,
    OUTPUT_PANEL,
    TRAIN_PANEL,
    Setting,
    settings,
)
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
) -> None:
    """imgclf: train, evaluate and use image classifiers."""
    _options["debug"] = debug
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


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------
def _cli_type(annotation: Any) -> type:
    """The type a setting's flag parses: bool, int or float; anything else (choices, lists, paths) is
    text that the configuration checks and converts."""
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    return options[0] if options[0] in (bool, int, float) else str


def setting_option(item: Setting) -> Any:
    """The typer option of one configuration setting: its flag, help, panel and default, as declared
    in `imgclf.config`."""
    kind = _cli_type(item.annotation)
    names = [f"{item.flag}/--no-{item.flag[2:]}" if kind is bool else item.flag]
    if item.short:
        names.append(item.short)
    default = f"\\[default: {item.default_text}]" if item.default_text else ""
    help_text = " ".join(part for part in (item.help, default) if part)
    option = typer.Option(*names, help=help_text, rich_help_panel=item.panel, show_default=False)
    return Annotated[kind | None, option]


PANELS = (DATA_PANEL, AUGMENT_PANEL, MODEL_PANEL, TRAIN_PANEL, OUTPUT_PANEL)


def _panel(param: inspect.Parameter) -> str | None:
    """The help panel of a command's option ("" for none); None for an argument."""
    for info in getattr(param.annotation, "__metadata__", ()):
        if isinstance(info, typer.models.OptionInfo):
            return info.rich_help_panel or ""
    return None


def _panel_rank(param: inspect.Parameter) -> int:
    panel = _panel(param)
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


def with_settings(chosen: Callable[[Setting], bool]) -> Callable[[Callable], Callable]:
    """Give a command one option per configuration setting that `chosen` picks; the command receives
    the ones given, by dotted key, in `settings` (each parsed as its declaration says)."""

    def decorate(command: Callable) -> Callable:
        picked = [item for item in settings() if chosen(item)]
        by_param = {item.param: item for item in picked}
        signature = inspect.signature(command, eval_str=True)
        own = [param for param in signature.parameters.values() if param.name != "settings"]
        generated = [
            inspect.Parameter(
                item.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=setting_option(item)
            )
            for item in picked
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given: dict[str, Any] = {}
            for name in [name for name in kwargs if name in by_param]:
                value, item = kwargs.pop(name), by_param[name]
                if value is not None:
                    given[item.key] = item.parse(value) if item.parse else value
            return command(**kwargs, settings=given)

        arguments = [param for param in own if _panel(param) is None]
        keyword = inspect.Parameter.KEYWORD_ONLY
        own_options = [param.replace(kind=keyword) for param in own if _panel(param) is not None]
        options = sorted(own_options + generated, key=_panel_rank)
        parameters = [*arguments, *options]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
        return wrapper

    return decorate


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


_SPLITS = next(item for item in settings() if item.key == "data.splits")
SplitsOption = setting_option(_SPLITS)
TtaOption = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average each image's probabilities with its mirror image's "
        "(twice the compute; for models trained with --hflip).",
    ),
]


@app.command()
@handle_errors
@with_settings(lambda item: True)
def train(
    data: Annotated[
        str | None,
        typer.Argument(
            help="Folder of class folders, folder with train/ val/ test/, CSV/TSV, .zip/.tar(.gz), or IDX "
            "files.",
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
    """Train a classifier on a folder, CSV, archive or IDX files; writes a run folder with the model.

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
        from imgclf.training.distributed import launch

        raise typer.Exit(launch(devices, _without_option(sys.argv[1:], "--devices")))
    reporter = ConsoleReporter()
    if resume is not None:
        extra = {"epochs": settings["train.epochs"]} if "train.epochs" in settings else {}
        api.train(resume=resume, callbacks=[reporter], **extra)
        return
    if data is None and config is None:
        raise typer.BadParameter("give the DATA to train on (or a --config that names data.source)")
    api.train(config=config, callbacks=[reporter], **overrides)


# ---------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def predict(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model folder, run folder holding model/, or exported .onnx file.", show_default=False
        ),
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (searched recursively) or globs.", show_default=False),
    ],
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
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "cpu",
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
) -> None:
    """Top-k predictions for images, streamed (bounded memory on folders of any size).

    MODEL is a model folder, a run folder or an exported .onnx file.
    Exit code 0: all read; 1: some could not be read; 2: usage error.
    """
    from imgclf.console import err_console
    from imgclf.inference.inputs import iter_inputs, parse_shard, select_shard
    from imgclf.inference.predictor import Predictor
    from imgclf.inference.writer import PredictionWriter

    _check_predict_options(top_k, output, resume)
    predictor = Predictor.from_path(
        model, device=device, label_map=label_map, backend=backend.value, threads=threads, tta=tta
    )
    mirrored = ", test-time augmentation (mirror images)" if tta else ""
    err_console.print(f"backend: {predictor.backend}{mirrored}", style="dim")
    if predictor.unknown_rule is not None:
        rule = predictor.unknown_rule.describe()
        err_console.print(f"answers unknown when {rule}", style="dim", soft_wrap=True)
    paths = iter_inputs(inputs)
    if shard is not None:
        paths = select_shard(paths, *parse_shard(shard))
    writer = (
        PredictionWriter(
            output, min(top_k, len(predictor.classes)), resume, unknown=predictor.unknown_rule is not None
        )
        if output is not None
        else None
    )
    try:
        if writer is not None and writer.done:
            err_console.print(f"resuming: {len(writer.done):,} images already in {output}")
            paths = (path for path in paths if path not in writer.done)
        written, failed = _stream_predictions(
            predictor.iter_predict(paths, top_k, batch_size), writer, batch_size
        )
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        err_console.print(f"wrote {written:,} rows to {output}" + (f" ({failed:,} failed)" if failed else ""))
    elif written == 0:
        raise typer.BadParameter("no input image found")
    if failed:
        raise typer.Exit(1)


def _check_predict_options(top_k: int, output: Path | None, resume: bool) -> None:
    if top_k < 1:
        raise typer.BadParameter("--top-k must be at least 1")
    if output is not None and output.suffix.lower() not in (".csv", ".jsonl"):
        raise typer.BadParameter("--output must end in .csv or .jsonl")
    if resume and output is None:
        raise typer.BadParameter("--resume continues an --output file; name it")


def _stream_predictions(results: Any, writer: Any, flush_every: int) -> tuple[int, int]:
    """Each prediction to the writer (flushed every `flush_every` rows) or as a line on the terminal;
    returns (rows, rows that failed)."""
    from imgclf.console import console

    written = failed = 0
    for result in results:
        written += 1
        failed += bool(result.error)
        if writer is None:
            console.print(prediction_line(result), markup=False, soft_wrap=True)
            continue
        writer.write(result)
        if written % flush_every == 0:
            writer.flush()
    return written, failed


def prediction_line(result: Any) -> str:
    """'path  name 0.9876  (other 0.0100, …)', 'path  unknown: why  (best guess name 0.41, …)' or
    'path  error: reason'."""
    if result.error:
        return f"{result.source}  error: {result.error}"
    if result.unknown:
        guesses = ", ".join(f"{n} {p:.4f}" for n, p in zip(result.names, result.probabilities))
        return f"{result.source}  unknown: {result.unknown}  (best guess {guesses})"
    others = ", ".join(f"{n} {p:.4f}" for n, p in zip(result.names[1:], result.probabilities[1:]))
    return f"{result.source}  {result.names[0]} {result.probabilities[0]:.4f}" + (
        f"  ({others})" if others else ""
    )


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------
class ExportFormat(str, Enum):
    onnx = "onnx"
    ort = "ort"
    tflite = "tflite"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


@app.command()
@handle_errors
def export(
    model: Annotated[
        Path, typer.Argument(help="Model folder (or a run folder holding model/).", show_default=False)
    ],
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="onnx | ort (ONNX Runtime's format for ORT Mobile on Android and iOS, loaded back and "
            "compared with the ONNX graph before it is written) | tflite (TFLite / LiteRT at batch 1, "
            "checked with the LiteRT interpreter; needs pip install 'imgclf[tflite]'). Core ML cannot be "
            "checked on Linux and is not offered.",
        ),
    ] = ExportFormat.onnx,
    quantize: Annotated[
        Quantize,
        typer.Option(
            help="none | int8: static quantization (QDQ, per-channel weights) calibrated on training images; "
            "written only if its top-1 answers agree with the float model's on at least 99% of the "
            "validation images (or --check-images) and it loses at most 1 point of accuracy.",
        ),
    ] = Quantize.none,
    calibration_images: Annotated[
        list[str] | None,
        typer.Option(
            "--calibration-images",
            help="Images (files, folders, globs) to calibrate int8 on \\[default: the training split].",
            show_default=False,
        ),
    ] = None,
    calibration_count: Annotated[int, typer.Option(help="How many images int8 is calibrated on.")] = 256,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The file to write \\[default: in the model folder: model.onnx (where predict and serve "
            "find it), model.int8.onnx, model.ort or model.int8.ort].",
            show_default=False,
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version (18 or later).")] = 18,
    dynamic_batch: Annotated[
        bool,
        typer.Option(
            "--dynamic-batch/--fixed-batch",
            help="A free batch dimension, or one fixed at --batch-size.",
        ),
    ] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="The batch of --fixed-batch.")] = 1,
    check_images: Annotated[
        list[str] | None,
        typer.Option(
            "--check-images",
            help="Images (files, folders, globs) for the checks: ONNX Runtime vs PyTorch, and int8 vs float "
            "\\[default: 16 images of the training data; int8: the validation split].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a model to ONNX (or ORT format, float or int8), with normalization and softmax inside.

    Input `image`: float32 N×C×H×W, RGB (or grey) pixels / 255, resized as the model's spec says.

    Output `probabilities`: float32 N×K. The metadata holds classes, names and the spec.

    Every file is checked before it is written: ONNX Runtime must match PyTorch on a real batch within
    1e-4; int8 must agree with the float model (99% top-1, at most 1 point of accuracy lost); the
    ORT format must match the ONNX graph within 1e-4. predict, serve and evaluate run any of them.
    """
    from imgclf.console import console
    from imgclf.export.onnx import export_onnx

    result = export_onnx(
        model,
        out,
        opset=opset,
        dynamic_batch=dynamic_batch,
        batch_size=batch_size,
        check_images=check_images,
        format=format.value,
        quantize=quantize.value,
        calibration_images=calibration_images,
        calibration_count=calibration_count,
    )
    batch = "dynamic" if result.dynamic_batch else f"fixed at {batch_size}"
    kind = {"onnx": f"opset {result.opset}", "ort": f"ORT format, opset {result.opset}", "tflite": "TFLite"}
    if result.format == "tflite":
        batch = "1"
    console.print(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {kind[result.format]}, batch {batch})",
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
        ratio = result.float_size_bytes / max(result.size_bytes, 1)
        lines.append(
            f"int8: {result.size_bytes / 1e6:.1f} MB vs float {result.float_size_bytes / 1e6:.1f} MB "
            f"({ratio:.1f}x smaller); calibrated on {check.calibration_images} images; {check.describe()}"
        )
    if result.ort_max_abs_diff is not None:
        lines.append(f"ORT format loaded back: max |Δp| = {result.ort_max_abs_diff:.2e} vs the ONNX graph")
    if result.tflite_max_abs_diff is not None:
        lines.append(
            f"TFLite in the LiteRT interpreter: max |Δp| = {result.tflite_max_abs_diff:.2e} vs PyTorch"
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def serve(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model folder, run folder holding model/, or exported .onnx file.", show_default=False
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 opens the service to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[
        int, typer.Option(help="Most images in one forward pass; 1 turns micro-batching off.")
    ] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long the first request of a batch waits for others (ms).")
    ] = 2.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body (MB); larger gets 413.")] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image (width × height); larger gets 400, before decoding.")
    ] = 40_000_000,
    max_images: Annotated[int, typer.Option(help="Most images in one request.")] = 32,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per image unless a request asks.")] = 5,
    label_map: Annotated[
        Path | None, typer.Option(help="JSON of display names (class names or 1-based indices as keys).")
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="auto: ONNX Runtime on the CPU when a current model.onnx exists.")
    ] = Backend.auto,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (PyTorch backend).")] = "cpu",
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads \\[default: one per core].", show_default=False)
    ] = None,
    tta: TtaOption = False,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
) -> None:
    """Serve a model over HTTP: POST /predict, POST /explain, GET /health, GET /model, docs at /docs,
    and a web page at / that works as a camera app on a phone.

    Concurrent requests are micro-batched (see --max-batch, --batch-wait-ms). POST /explain (Grad-CAM)
    needs the PyTorch model (--backend torch). Ctrl-C stops it.
    """
    import uvicorn

    from imgclf.console import err_console
    from imgclf.inference.predictor import Predictor
    from imgclf.serve import ServeSettings, create_app

    for name, value in (("--max-batch", max_batch), ("--max-images", max_images), ("--top-k", top_k)):
        if value < 1:
            raise typer.BadParameter(f"{name} must be at least 1")
    if not 0 < port < 65536:
        raise typer.BadParameter("--port must be between 1 and 65535")
    predictor = Predictor.from_path(
        model, device=device, label_map=label_map, backend=backend.value, threads=threads, tta=tta
    )
    settings = ServeSettings(
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_body_mb=max_body_mb,
        max_pixels=max_pixels,
        max_images=max_images,
        default_top_k=top_k,
    )
    application = create_app(predictor, settings)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(
        f"serving {len(predictor.classes)} classes with {predictor.backend}"
        f"{', test-time augmentation (mirror images)' if tta else ''} at http://{shown}:{port}/ "
        f"(API docs: /docs; micro-batching: {'off' if max_batch == 1 else f'up to {max_batch} images'})",
        markup=False,
        soft_wrap=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"note: listening on {host}, reachable from other machines", style="yellow")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=access_log)


# ---------------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------------
@app.command("cache")
@handle_errors
def cache_command(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete the cache's entries (all kinds, or those of --kind).")
    ] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="decoded | headers | archives | features (repeatable) \\[default: all].", show_default=False
        ),
    ] = None,
) -> None:
    """What imgclf keeps in its cache folder ($IMGCLF_CACHE_DIR or ~/.cache/imgclf), and its size.

    Everything there can be deleted at any time: it is rebuilt when needed.
    """
    import datetime

    from imgclf.console import console
    from imgclf.data.cache import CACHE_KINDS, clear_cache, list_cache
    from imgclf.paths import cache_dir

    unknown = sorted(set(kind or []) - set(CACHE_KINDS))
    if unknown:
        raise typer.BadParameter(f"--kind {unknown[0]!r}: use one of {', '.join(CACHE_KINDS)}")
    if clear:
        freed = clear_cache(kind)
        console.print(f"freed {freed / 2**20:,.1f} MiB in {cache_dir()}", markup=False, soft_wrap=True)
        return
    entries = [e for e in list_cache() if not kind or e.kind in kind]
    console.print(f"cache folder {cache_dir()}", markup=False, soft_wrap=True)
    for entry in entries:
        used = datetime.datetime.fromtimestamp(entry.last_used).strftime("%Y-%m-%d %H:%M")
        console.print(
            f"  {entry.kind:<9} {entry.name[:20]:<21} {entry.bytes / 2**20:>9,.1f} MiB  used {used}  "
            f"{entry.detail}",
            markup=False,
            soft_wrap=True,
        )
    total = sum(e.bytes for e in entries)
    console.print(
        f"{len(entries)} entries, {total / 2**20:,.1f} MiB (imgclf cache --clear frees it)", markup=False
    )


# ---------------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def explain(
    model: Annotated[
        Path, typer.Argument(help="Model folder (or a run folder holding model/).", show_default=False)
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (searched recursively) or globs.", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the heatmaps.")] = Path("explain"),
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="Explain this class instead of each image's top-1 class."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "cpu",
) -> None:
    """Where the model looked: a Grad-CAM heatmap over each image.

    Writes NAME.gradcam.png (the image as the model saw it, and the heatmap over it) per image, and
    explanations.csv (path, class, name, probability, peak_row, peak_col, error). The heatmap is of
    the top-1 class, or of --class. Runs the PyTorch model (an export has no gradients).
    """
    import csv
    import io

    from imgclf.console import console
    from imgclf.inference.explain import Explainer, Explanation, explanation_png
    from imgclf.inference.inputs import iter_inputs
    from imgclf.inference.predictor import Predictor
    from imgclf.io import write_atomic, write_text_atomic

    explainer = Explainer(Predictor.from_path(model, device=device, backend="torch"))
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "class", "name", "probability", "peak_row", "peak_col", "error", "unknown"])
    written = failed = 0
    used: set[str] = set()
    for result in explainer.explain(iter_inputs(inputs), class_name):
        if not isinstance(result, Explanation):
            failed += 1
            writer.writerow([result.source, "", "", "", "", "", result.error, ""])
            console.print(f"{result.source}  error: {result.error}", markup=False, soft_wrap=True)
            continue
        stem = Path(result.source).stem
        name = stem if stem not in used else f"{stem}-{written}"
        used.add(name)
        content = explanation_png(result)
        write_atomic(out / f"{name}.gradcam.png", lambda tmp, data=content: tmp.write_bytes(data))
        row, column = result.peak
        probability = f"{result.probability:.6f}"
        writer.writerow(
            [result.source, result.label, result.name, probability, row, column, "", result.unknown or ""]
        )
        answer = f"  (the model answers unknown: {result.unknown})" if result.unknown else ""
        console.print(
            f"{result.source}  {result.name} {result.probability:.4f}{answer}  → "
            f"{out / (name + '.gradcam.png')}",
            markup=False,
            soft_wrap=True,
        )
        written += 1
    write_text_atomic(out / "explanations.csv", buffer.getvalue())
    if written + failed == 0:
        raise typer.BadParameter("no input image found")
    console.print(
        f"wrote {written:,} heatmaps and explanations.csv to {out}"
        + (f" ({failed:,} failed)" if failed else "")
    )
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def evaluate(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model folder (or a run folder holding model/), or an exported .onnx file (run with "
            "ONNX Runtime).",
            show_default=False,
        ),
    ],
    data: Annotated[str, typer.Argument(help="Any data source `train` accepts.", show_default=False)],
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
    path_col: Annotated[str | None, typer.Option(help="CSV column with image paths.")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV column with labels.")] = None,
    splits: SplitsOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 128,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    tta: TtaOption = False,
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
        batch_size=batch_size,
        device=device,
        top_k=top_k,
        path_col=path_col,
        label_col=label_col,
        splits=splits or "auto",
        tta=tta,
    )
    print_evaluation(evaluation.metrics)
    line = problems_line(evaluation.problems, "skipped_files.csv")
    if line:
        console.print(f"[yellow]{line}[/yellow]")
    console.print(f"[bold]outputs[/bold] {evaluation.out_dir}")


@app.command()
@handle_errors
def calibrate(
    model: Annotated[
        Path, typer.Argument(help="Model folder (or a run folder holding model/).", show_default=False)
    ],
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
    path_col: Annotated[str | None, typer.Option(help="CSV column with image paths.")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV column with labels.")] = None,
    splits: SplitsOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 128,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
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
        batch_size=batch_size,
        device=device,
        path_col=path_col,
        label_col=label_col,
        splits=splits or "auto",
    )
    for line in calibration_lines(report):
        console.print(line, markup=False, soft_wrap=True)


def calibration_lines(report: dict[str, Any]) -> list[str]:
    """imgclf.json's `calibration` in words."""
    if not report:
        return ["no calibration: too few labelled images"]
    lines = [f"temperature {report['temperature']:.4f}, fitted on {report['fitted_on']}"]
    if report.get("note"):
        lines[0] = f"temperature 1 (none: {report['note']})"
    for key, before in report.items():
        if key.endswith("_ece_before"):
            split = key.removesuffix("_ece_before")
            lines.append(f"{split} ECE {before:.4f} → {report[f'{split}_ece_after']:.4f}")
    chosen = report.get("threshold")
    if chosen:
        from imgclf.inference.unknown import UnknownRule

        lines.append(f"unknown when {UnknownRule.from_calibration(report).describe()}")
        lines.append(
            f"on those images: coverage {chosen['coverage']:.1%} ({chosen['answered']} of {chosen['images']} "
            f"answered), precision {chosen['precision']:.4f} (asked ≥ {chosen['min_precision']:g})"
        )
        if "test_coverage" in chosen:
            test = f"coverage {chosen['test_coverage']:.1%}, precision {chosen['test_precision']:.4f}"
            lines.append(f"test split: {test}")
    return lines


@app.command()
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
    from imgclf.console import console
    from imgclf.evaluation.report import write_report

    console.print(f"wrote {write_report(run_dir, out)}")


@app.command()
@handle_errors
def check(
    data: Annotated[str, typer.Argument(help="Any data source `train` accepts.", show_default=False)],
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any error-level finding exists.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write every finding to this JSON file.")
    ] = None,
    path_col: Annotated[str | None, typer.Option(help="CSV column with image paths.")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV column with labels.")] = None,
    splits: SplitsOption = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes reading files. \\[default: cores, at most 8]")
    ] = None,
    imbalance: Annotated[
        float,
        typer.Option(
            help="Warn when the largest class has more than this many times the images of the smallest."
        ),
    ] = 10.0,
    min_class_size: Annotated[int, typer.Option(help="Warn about classes with fewer images.")] = 10,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="Also find likely wrong labels: out-of-sample probabilities from a head cross-fitted "
            "on the offline backbone's features, ranked by confident learning; writes "
            "label_issues.csv and label_issues.png into --labels-out.",
        ),
    ] = False,
    labels_model: Annotated[
        Path | None,
        typer.Option(help="A saved model whose features --labels uses \\[default: efficientnet_lite0]."),
    ] = None,
    labels_out: Annotated[Path, typer.Option(help="Folder for the --labels outputs.")] = Path("label_issues"),
    folds: Annotated[int, typer.Option(help="Cross-fitting folds of --labels.")] = 5,
) -> None:
    """Audit a dataset before training: corrupt files, duplicates and leakage between splits,
    near-duplicates, the same image under two classes, imbalance, tiny or EXIF-rotated images,
    unusual modes, missing files; with --labels, likely wrong labels."""
    import json as json_module

    from imgclf.console import print_audit
    from imgclf.data.audit import audit
    from imgclf.io import write_text_atomic

    source: Any = data
    if labels:  # scanned once, for the audit and the label check
        from imgclf.data.sources import scan_source

        source = scan_source(data, path_col=path_col, label_col=label_col, splits=splits or "auto")
    result = audit(
        source,
        path_col=path_col,
        label_col=label_col,
        splits=splits or "auto",
        workers=workers,
        imbalance_threshold=imbalance,
        min_class_size=min_class_size,
    )
    print_audit(result)
    if labels:
        _check_labels(source, result, labels_model, labels_out, folds)
    if out is not None:
        write_text_atomic(out, json_module.dumps(result.to_dict(), indent=2))
        from imgclf.console import console

        console.print(f"wrote {out}")
    if strict and result.has_errors:
        raise typer.Exit(1)


def _check_labels(image_set: Any, result: Any, model: Path | None, out: Path, folds: int) -> None:
    """check --labels: the likely wrong labels, a finding in the report and two files in `out`."""
    from imgclf.console import ConsoleReporter, console
    from imgclf.data.audit import Finding
    from imgclf.data.headers import read_headers
    from imgclf.data.prepared import header_workers
    from imgclf.features.label_issues import find_label_issues, write_label_issues

    image_set = read_headers(image_set, workers=header_workers(len(image_set), None))
    conflicting = {
        path
        for finding in result.findings
        if finding.kind == "conflicting-labels"
        for entry in finding.files
        for path in entry["paths"]
    }
    found = find_label_issues(
        image_set, model, folds, always=sorted(conflicting), callbacks=[ConsoleReporter()]
    )
    table = write_label_issues(found, out)
    share = len(found.issues) / max(1, len(found.image_set))
    console.print(
        f"likely wrong labels: {len(found.issues):,} of {len(found.image_set):,} images ({share:.1%})"
    )
    for issue in found.issues[:10]:
        console.print(
            f"  {issue.path}  labelled {issue.given}, looks {issue.suggested} ({issue.quality:.3f})",
            markup=False,
            soft_wrap=True,
        )
    console.print(f"wrote {table} and {out / 'label_issues.png'}")
    files = [
        {"path": i.path, "given": i.given, "suggested": i.suggested, "score": round(i.quality, 6)}
        for i in found.issues
    ]
    if files:
        message = "likely wrong labels (confident learning on out-of-sample probabilities)"
        result.findings.append(Finding("warning", "label-issue", message, files))


@app.command()
@handle_errors
def show(
    data: Annotated[str, typer.Argument(help="Any data source `train` accepts.", show_default=False)],
    per_class: Annotated[int, typer.Option(help="Images per class (one row per class).")] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Which images are drawn.")] = 0,
    path_col: Annotated[str | None, typer.Option(help="CSV column with image paths.")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV column with labels.")] = None,
    splits: SplitsOption = None,
) -> None:
    """Write a grid of sample images per class (in Python, `imgclf.show(...)` returns the figure)."""
    from imgclf.console import console
    from imgclf.evaluation.show import show as show_samples

    show_samples(
        data,
        per_class=per_class,
        out=out,
        seed=seed,
        path_col=path_col,
        label_col=label_col,
        splits=splits or "auto",
    )
    console.print(f"wrote {out}")


@app.command()
@handle_errors
def features(
    model: Annotated[
        str,
        typer.Argument(
            help="A saved model folder, or a backbone name such as efficientnet_lite0 (pretrained weights).",
            show_default=False,
        ),
    ],
    data: Annotated[str, typer.Argument(help="Any data source `train` accepts.", show_default=False)],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for features.npy, labels.npy, samples.csv, classes.json."),
    ] = Path("features"),
    weights: Annotated[Path | None, typer.Option(help="Weights file for a backbone name.")] = None,
    split: Annotated[Split, typer.Option(help="Which split of the data.")] = Split.all,
    manifest: Annotated[Path | None, typer.Option(help="manifest.csv whose split to use.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    path_col: Annotated[str | None, typer.Option(help="CSV column with image paths.")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV column with labels.")] = None,
    splits: SplitsOption = None,
) -> None:
    """Bottleneck features (the tutorials' predict_generator → np.save), in batches with a progress bar."""
    import numpy as np

    from imgclf import api
    from imgclf.console import ConsoleReporter, console

    folder = api.features(
        model,
        data,
        out,
        weights=weights,
        split=split.value,
        manifest=manifest,
        batch_size=batch_size,
        device=device,
        path_col=path_col,
        label_col=label_col,
        splits=splits or "auto",
        callbacks=[ConsoleReporter()],
    )
    shape = np.load(folder / "features.npy", mmap_mode="r").shape
    console.print(f"wrote {shape[0]:,} × {shape[1]:,} features to {folder}")


# ---------------------------------------------------------------------------------------------------
# models, augment-preview, demo
# ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def models(
    pattern: Annotated[str | None, typer.Argument(help="Filter, e.g. 'resnet*' or 'builtin'.")] = None,
) -> None:
    """List the models `--model` accepts: imgclf's builtins, then timm architectures."""
    from imgclf.console import console
    from imgclf.models import list_models

    rows = list_models(pattern)
    for name, description in rows:
        console.print(f"{name:<36} {description}", markup=False)
    if pattern is None:
        console.print(f"({len(rows)} models; filter with e.g. `imgclf models 'resnet*'`)")


@app.command("augment-preview")
@handle_errors
@with_settings(
    lambda item: item.key.startswith("augment.") and item.key not in ("augment.mixup", "augment.cutmix")
)
def augment_preview(
    data: Annotated[str, typer.Argument(help="Any data source `train` accepts.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "augment_preview.png"
    ),
    images: Annotated[int, typer.Option(help="How many source images (rows).")] = 6,
    variants: Annotated[
        int, typer.Option(help="Augmented versions per image (columns after the original).")
    ] = 7,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
    image_size: Annotated[
        str | None, typer.Option(help="Size to show the images at. \\[default: from the data]")
    ] = None,
    seed: Annotated[int, typer.Option(help="Which images and transforms are drawn.")] = 0,
    *,
    settings: dict[str, Any],
) -> None:
    """Write a PNG grid: each row one image, first the original, then augmented versions.

    The augmentation flags are `train`'s (MixUp and CutMix mix whole batches and are not shown)."""
    from imgclf.config import parse_size, resolve_config
    from imgclf.preview import write_augment_preview

    overrides = {**settings, "seed": seed}
    if image_size is not None:
        overrides["data.image_size"] = parse_size(image_size)
    cfg = resolve_config(config, overrides)
    path = write_augment_preview(data, out, cfg, images=images, variants=variants)
    from imgclf.console import console

    console.print(f"wrote {path}")


@app.command()
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


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interrupt outside a command
        sys.exit(130)
