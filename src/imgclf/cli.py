"""The `imgclf` command: parse flags → config → call the API → exit code.

A user mistake (an `ImgclfError`) prints one line on stderr and exits non-zero; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
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
        from imgclf import __version__

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
            err_console.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
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
DATA_HELP = "Data flags"
AUG_HELP = "Augmentation (Keras ImageDataGenerator meanings)"
MODEL_HELP = "Model"
TRAIN_HELP = "Training"
OUT_HELP = "Output"


def _default(key: str) -> str:
    """The default of a setting ("train.lr"), for help texts that never drift from config.py."""
    from imgclf.config import Config

    value: Any = Config()
    for part in key.split("."):
        value = getattr(value, part)
    return str(value)


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


def _csv_list(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _size(value: str | None) -> list[int] | None:
    if value is None:
        return None
    parts = value.lower().replace("x", ",").split(",")
    try:
        return [int(part) for part in parts if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r}: give one size (32) or height,width (32,48)") from None


SplitsOption = Annotated[
    str | None,
    typer.Option(
        "--splits",
        help="Which folders are splits: auto (folders holding the same class folders, named by their "
        "words: training_set, seg_test, Validation …) | none (the sub-folders are classes) | "
        "train=FOLDER,val=FOLDER,test=FOLDER. \\[default: auto]",
        rich_help_panel=DATA_HELP,
    ),
]
# Augmentation flags, shared by `train` and `augment-preview` (Keras ImageDataGenerator meanings).
AugmentOption = Annotated[
    str | None,
    typer.Option(
        "--augment",
        help="Preset: auto (the recipe's: strong for recipe transfer, digits for the CNN chosen for small "
        "grey images, else none) | none | light | strong | digits (shifts, zoom, rotation; no flips). "
        "Flags below override it. "
        f"\\[default: {_default('augment.preset')}]",
        rich_help_panel=AUG_HELP,
    ),
]
RotationOption = Annotated[
    float | None,
    typer.Option(help="Rotation range in degrees (rotation_range).", rich_help_panel=AUG_HELP),
]
WidthShiftOption = Annotated[
    float | None, typer.Option(help="Horizontal shift, fraction of width.", rich_help_panel=AUG_HELP)
]
HeightShiftOption = Annotated[
    float | None, typer.Option(help="Vertical shift, fraction of height.", rich_help_panel=AUG_HELP)
]
ShearOption = Annotated[
    float | None,
    typer.Option(help="Shear angle range in degrees, as Keras' shear_range.", rich_help_panel=AUG_HELP),
]
ZoomOption = Annotated[
    float | None,
    typer.Option(help="Zoom range: x and y zoom drawn from [1-z, 1+z].", rich_help_panel=AUG_HELP),
]
HflipOption = Annotated[
    bool | None,
    typer.Option(
        "--hflip/--no-hflip",
        help="Random horizontal flips.",
        rich_help_panel=AUG_HELP,
        show_default=False,
    ),
]
VflipOption = Annotated[
    bool | None,
    typer.Option(
        "--vflip/--no-vflip", help="Random vertical flips.", rich_help_panel=AUG_HELP, show_default=False
    ),
]
BrightnessOption = Annotated[
    float | None, typer.Option(help="Brightness factor drawn from [1-b, 1+b].", rich_help_panel=AUG_HELP)
]
ContrastOption = Annotated[
    float | None, typer.Option(help="Contrast factor drawn from [1-c, 1+c].", rich_help_panel=AUG_HELP)
]
CropScaleOption = Annotated[
    float | None,
    typer.Option(
        help="Random-resized crop: each crop keeps a random share of the area between this and 1 "
        "(aspect ratio 3/4 to 4/3) and is stretched to the full size, as torchvision's "
        "RandomResizedCrop; 1 = off. Training images are then cached 1.15x the model size when "
        "they are that large, so crops keep their detail.",
        rich_help_panel=AUG_HELP,
    ),
]
TtaOption = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average each image's probabilities with its mirror image's "
        "(twice the compute; for models trained with --hflip).",
    ),
]
FillOption = Annotated[
    str | None,
    typer.Option(
        help="Fill outside the image: nearest | constant | reflect | wrap.", rich_help_panel=AUG_HELP
    ),
]


@app.command()
@handle_errors
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
        typer.Option("--config", "-c", help="YAML file with settings (flags win).", rich_help_panel=OUT_HELP),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run folder where it stopped.", rich_help_panel=OUT_HELP),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            help=f"Folder that holds run folders. \\[default: {_default('output.project')}]",
            rich_help_panel=OUT_HELP,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help=f"Run folder name; -2, -3 … appended if taken. \\[default: {_default('output.name')}]",
            rich_help_panel=OUT_HELP,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help=f"Seed of the split, initialisation and shuffling. \\[default: {_default('seed')}]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    path_col: Annotated[
        str | None,
        typer.Option(help="CSV column with image paths. \\[default: auto]", rich_help_panel=DATA_HELP),
    ] = None,
    label_col: Annotated[
        str | None, typer.Option(help="CSV column with labels. \\[default: auto]", rich_help_panel=DATA_HELP)
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class order (others are left out).", rich_help_panel=DATA_HELP),
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(
            help="JSON of display names (keys: class names or 1-based indices).", rich_help_panel=DATA_HELP
        ),
    ] = None,
    splits: SplitsOption = None,
    val_split: Annotated[
        float | None,
        typer.Option(
            help=f"Validation fraction carved from training data. \\[default: {_default('data.val_split')}]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    test_split: Annotated[
        float | None,
        typer.Option(
            help="Test fraction carved when the data has no test folder. "
            f"\\[default: {_default('data.test_split')}]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="Reuse the split of a manifest.csv (path,label,split).", rich_help_panel=DATA_HELP),
    ] = None,
    image_size: Annotated[
        str | None,
        typer.Option(
            help="Model input size: 32 or 32,48 (height,width). \\[default: from the data]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option(help="1 or 3. \\[default: 1 if every image is grayscale]", rich_help_panel=DATA_HELP),
    ] = None,
    resize: Annotated[
        str | None,
        typer.Option(
            help=f"stretch | crop | pad. \\[default: {_default('data.resize')}]", rich_help_panel=DATA_HELP
        ),
    ] = None,
    interpolation: Annotated[
        str | None,
        typer.Option(
            help="auto (a pretrained backbone's own filter, e.g. bicubic for EfficientNet-Lite; else "
            "bilinear) | nearest | bilinear | bicubic | lanczos. "
            f"\\[default: {_default('data.interpolation')}]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    normalize: Annotated[
        str | None,
        typer.Option(
            help="auto | rescale (x/255) | half (to -1..1) | imagenet. "
            f"\\[default: {_default('data.normalize')}]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            help="auto | ram | disk | none: decode once into RAM, or into a memory-mapped file in the "
            "cache folder (auto: RAM when it fits the budget, else disk; both kept for the next run), "
            f"or decode every batch. \\[default: {_default('data.cache')}]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    cache_budget: Annotated[
        float | None,
        typer.Option(
            "--cache-budget",
            help="GiB of RAM the image cache may take. \\[default: half of the available memory]",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Decoding processes. \\[default: cores, at most 8]", rich_help_panel=DATA_HELP),
    ] = None,
    augment: AugmentOption = None,
    rotation: RotationOption = None,
    width_shift: WidthShiftOption = None,
    height_shift: HeightShiftOption = None,
    shear: ShearOption = None,
    zoom: ZoomOption = None,
    hflip: HflipOption = None,
    vflip: VflipOption = None,
    brightness: BrightnessOption = None,
    contrast: ContrastOption = None,
    crop_scale: CropScaleOption = None,
    fill: FillOption = None,
    mixup: Annotated[
        float | None,
        typer.Option(
            help="MixUp: blend each training batch with itself reversed, weight ~ Beta(a, a) per batch "
            "(timm's mixup_alpha; 0.2-0.4 is usual; 0 = off).",
            rich_help_panel=AUG_HELP,
        ),
    ] = None,
    cutmix: Annotated[
        float | None,
        typer.Option(
            help="CutMix: paste a box of the reversed batch, its area share ~ Beta(a, a) per batch "
            "(timm's cutmix_alpha; 1.0 is usual; 0 = off). With --mixup, each batch gets one of them.",
            rich_help_panel=AUG_HELP,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="auto (photos: efficientnet_lite0 with ImageNet weights; small grey images such as "
            "digits: cnn from scratch; says which and why) | mlp | cnn-small | cnn-basic | cnn | "
            "efficientnet_lite0 | any timm name (see `imgclf models`). "
            f"\\[default: {_default('model.name')}]",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    filters: Annotated[
        str | None, typer.Option(help="cnn: filters per block, e.g. 32,64,128.", rich_help_panel=MODEL_HELP)
    ] = None,
    dense: Annotated[
        str | None,
        typer.Option(
            help="Dense layer sizes before the classifier, e.g. 512 or 128,64.", rich_help_panel=MODEL_HELP
        ),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help="Dropout rate: in the builtin CNNs' dense layers; for timm models on the pooled "
            "features before the classifier (timm's drop_rate); with --head-only on the cached "
            "features (default 0.5).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    batchnorm: Annotated[
        bool | None,
        typer.Option(
            "--batchnorm/--no-batchnorm",
            help="cnn: BatchNorm after convs.",
            rich_help_panel=MODEL_HELP,
            show_default=False,
        ),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Start from ImageNet "
            "weights: efficientnet_lite0 offline, other timm models from the "
            "hub (or its cache).",
            rich_help_panel=MODEL_HELP,
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Start from this weights file (.safetensors, .pth).", rich_help_panel=MODEL_HELP),
    ] = None,
    freeze_epochs: Annotated[
        int | None,
        typer.Option(
            help="Stage 1: train only the new head on the frozen backbone for this many epochs.",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(
            help="Stage 2: then fine-tune for this many epochs (total = freeze + finetune).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    finetune_lr: Annotated[
        float | None,
        typer.Option(
            help="The backbone's learning rate when fine-tuning (stage 2; recipe transfer). "
            "\\[default: lr / 10; transfer: lr × 0.3]",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    unfreeze: Annotated[
        str | None,
        typer.Option(
            help=f"Stage 2 unfreezes: all | N (the last N blocks). \\[default: {_default('train.unfreeze')}]",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    finetune_bn: Annotated[
        str | None,
        typer.Option(
            help="Stage 2 BatchNorm statistics: train (they follow the new data) | frozen (the "
            "ImageNet statistics stay, as in the Keras transfer-learning guide; the layers' scale "
            "and shift still learn). \\[default: frozen with recipe transfer, else train]",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    head_only: Annotated[
        bool | None,
        typer.Option(
            "--head-only/--no-head-only",
            help="Train a linear head on bottleneck features computed once (seconds); saves the whole model.",
            rich_help_panel=MODEL_HELP,
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="auto | transfer (a head fitted on cached features, then the whole network fine-tuned "
            "from it at a lower learning rate for the backbone, the best epoch kept by validation "
            "accuracy) | plain (train as configured). auto: transfer for a pretrained backbone "
            "unless --head-only or --freeze-epochs, else plain. \\[default: auto]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            help="Minutes for the whole run: no epoch starts that would end after it (the best epoch "
            "is kept); recipe transfer plans its fine-tuning epochs to fit. 0 = none. \\[default: "
            "transfer on the CPU: 10 min per 2,000 images, at least 5; else none]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            "-e",
            help="Epochs (recipe transfer: fine-tuning epochs after the head). \\[default: plain 10; "
            "transfer: planned from the data and the time limit]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            help="\\[default: plain 64, transfer 32]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help=f"adam | adamw | sgd | rmsprop. \\[default: {_default('train.optimizer')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate (recipe transfer: the head's). \\[default: plain 2e-3, transfer 1e-3]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    momentum: Annotated[
        float | None,
        typer.Option(
            help=f"sgd momentum. \\[default: {_default('train.momentum')}]", rich_help_panel=TRAIN_HELP
        ),
    ] = None,
    nesterov: Annotated[
        bool | None,
        typer.Option(
            "--nesterov/--no-nesterov",
            help="sgd with Nesterov momentum.",
            rich_help_panel=TRAIN_HELP,
            show_default=False,
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help=f"\\[default: {_default('train.weight_decay')}]", rich_help_panel=TRAIN_HELP),
    ] = None,
    label_smoothing: Annotated[
        float | None,
        typer.Option(help="\\[default: plain 0, transfer 0.1]", rich_help_panel=TRAIN_HELP),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help=f"constant | cosine | onecycle | plateau. \\[default: {_default('train.schedule')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    warmup_epochs: Annotated[
        float | None,
        typer.Option(
            help="Linear warm-up length (constant, cosine). \\[default: plain 1, transfer 0.3]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    class_weight: Annotated[
        str | None,
        typer.Option(
            help=f"auto (balanced) | none. \\[default: {_default('train.class_weight')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    monitor: Annotated[
        str | None,
        typer.Option(
            help="val_loss | val_acc (ties broken by val_loss): picks the best model. \\[default: plain "
            "val_loss, transfer val_acc]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Early stop after this many epochs without improvement (restores the best).",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help=f"auto | cpu | cuda | cuda:N. \\[default: {_default('train.device')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto (bf16 on CUDA, and on processors with native bf16: AVX-512 BF16, AMX) | fp32 | bf16. "
            f"\\[default: {_default('train.precision')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="Run training steps through torch.compile (faster steps after a one-time compile; "
            "needs gcc on the CPU).",
            show_default=False,
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    lr_scaling: Annotated[
        str | None,
        typer.Option(
            help="none | linear | sqrt: scale --lr by (batch size × processes) / --lr-base-batch, so larger "
            f"batches keep accuracy. \\[default: {_default('train.lr_scaling')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    lr_base_batch: Annotated[
        int | None,
        typer.Option(
            help=f"The batch size --lr is meant for. \\[default: {_default('train.lr_base_batch')}]",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
    devices: Annotated[
        int | None,
        typer.Option(
            help="Train with this many processes on this machine (torchrun + DistributedDataParallel; "
            "one GPU each, or CPU processes with gloo).",
            rich_help_panel=TRAIN_HELP,
        ),
    ] = None,
) -> None:
    """Train a classifier on a folder, CSV, archive or IDX files; writes a run folder with the model.

    Example: [bold]imgclf train data/ --model cnn-basic --width-shift 0.3 --zoom 0.2 --hflip[/bold]
    """
    from imgclf import api
    from imgclf.console import ConsoleReporter

    overrides: dict[str, Any] = {
        "seed": seed,
        "data.source": data,
        "data.path_col": path_col,
        "data.label_col": label_col,
        "data.classes": _csv_list(classes),
        "data.label_map": str(label_map) if label_map else None,
        "data.splits": splits,
        "data.val_split": val_split,
        "data.test_split": test_split,
        "data.manifest": str(manifest) if manifest else None,
        "data.image_size": _size(image_size),
        "data.channels": channels,
        "data.resize": resize,
        "data.interpolation": interpolation,
        "data.normalize": normalize,
        "data.cache": cache,
        "data.cache_budget_gb": cache_budget,
        "data.workers": workers,
        "augment.preset": augment,
        "augment.rotation": rotation,
        "augment.width_shift": width_shift,
        "augment.height_shift": height_shift,
        "augment.shear": shear,
        "augment.zoom": zoom,
        "augment.hflip": hflip,
        "augment.vflip": vflip,
        "augment.brightness": brightness,
        "augment.contrast": contrast,
        "augment.crop_scale": crop_scale,
        "augment.fill": fill,
        "augment.mixup": mixup,
        "augment.cutmix": cutmix,
        "model.name": model,
        "model.filters": _csv_list(filters),
        "model.dense": _csv_list(dense),
        "model.dropout": dropout,
        "model.batchnorm": batchnorm,
        "model.pretrained": pretrained,
        "model.weights": str(weights) if weights else None,
        "train.freeze_epochs": freeze_epochs,
        "train.finetune_epochs": finetune_epochs,
        "train.finetune_lr": finetune_lr,
        "train.unfreeze": unfreeze,
        "train.finetune_bn": finetune_bn,
        "train.head_only": head_only,
        "train.recipe": recipe,
        "train.time_limit": time_limit,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.optimizer": optimizer,
        "train.lr": lr,
        "train.momentum": momentum,
        "train.nesterov": nesterov,
        "train.weight_decay": weight_decay,
        "train.label_smoothing": label_smoothing,
        "train.schedule": schedule,
        "train.warmup_epochs": warmup_epochs,
        "train.class_weight": class_weight,
        "train.monitor": monitor,
        "train.patience": patience,
        "train.device": device,
        "train.precision": precision,
        "train.compile": compile,
        "train.lr_scaling": lr_scaling,
        "train.lr_base_batch": lr_base_batch,
        "output.project": project,
        "output.name": name,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if devices is not None and devices < 1:
        raise typer.BadParameter("--devices must be at least 1")
    if devices is not None and devices > 1 and "WORLD_SIZE" not in os.environ:
        from imgclf.training.distributed import launch

        raise typer.Exit(launch(devices, _without_option(sys.argv[1:], "--devices")))
    reporter = ConsoleReporter()
    if resume is not None:
        extra = {"epochs": epochs} if epochs is not None else {}
        api.train(resume=resume, callbacks=[reporter], **extra)
        return
    if data is None and config is None:
        raise typer.BadParameter("give the DATA to train on (or a --config that names data.source)")
    from imgclf.config import resolve_config

    cfg = resolve_config(config, overrides)
    if cfg.data.source is None:
        raise typer.BadParameter("give the DATA to train on (or data.source in the --config file)")
    api.train(config=cfg, callbacks=[reporter])


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
    from imgclf.console import console, err_console
    from imgclf.predict import PredictionWriter, Predictor, iter_inputs, parse_shard, select_shard

    if top_k < 1:
        raise typer.BadParameter("--top-k must be at least 1")
    if output is not None and output.suffix.lower() not in (".csv", ".jsonl"):
        raise typer.BadParameter("--output must end in .csv or .jsonl")
    if resume and output is None:
        raise typer.BadParameter("--resume continues an --output file; name it")
    predictor = Predictor.from_path(
        model, device=device, label_map=label_map, backend=backend.value, threads=threads, tta=tta
    )
    mirrored = ", test-time augmentation (mirror images)" if tta else ""
    err_console.print(f"backend: {predictor.backend}{mirrored}", style="dim")
    paths = iter_inputs(inputs)
    if shard is not None:
        paths = select_shard(paths, *parse_shard(shard))
    writer = (
        PredictionWriter(output, min(top_k, len(predictor.classes)), resume) if output is not None else None
    )
    written = failed = 0
    try:
        if writer is not None and writer.done:
            err_console.print(f"resuming: {len(writer.done):,} images already in {output}")
            paths = (path for path in paths if path not in writer.done)
        for result in predictor.iter_predict(paths, top_k=top_k, batch_size=batch_size):
            written += 1
            failed += bool(result.error)
            if writer is not None:
                writer.write(result)
                if written % batch_size == 0:
                    writer.flush()
            else:
                console.print(prediction_line(result), markup=False, soft_wrap=True)
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        err_console.print(f"wrote {written:,} rows to {output}" + (f" ({failed:,} failed)" if failed else ""))
    elif written == 0:
        raise typer.BadParameter("no input image found")
    if failed:
        raise typer.Exit(1)


def prediction_line(result: Any) -> str:
    """'path  name 0.9876  (other 0.0100, …)' or 'path  error: reason'."""
    if result.error:
        return f"{result.source}  error: {result.error}"
    others = ", ".join(f"{n} {p:.4f}" for n, p in zip(result.names[1:], result.probabilities[1:]))
    return f"{result.source}  {result.names[0]} {result.probabilities[0]:.4f}" + (
        f"  ({others})" if others else ""
    )


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------
class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command()
@handle_errors
def export(
    model: Annotated[
        Path, typer.Argument(help="Model folder (or a run folder holding model/).", show_default=False)
    ],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="Export format.")
    ] = ExportFormat.onnx,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The .onnx file to write \\[default: model.onnx in the model folder, where predict and "
            "serve find it].",
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
            help="Images (files, folders, globs) for the ONNX Runtime vs PyTorch check "
            "\\[default: 16 images of the training data, if still there].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a model to ONNX, with normalization and softmax inside the graph.

    Input `image`: float32 N×C×H×W, RGB (or grey) pixels / 255, resized as the model's spec says.

    Output `probabilities`: float32 N×K. The ONNX metadata holds classes, names and the spec.

    ONNX Runtime must match PyTorch on a real batch within 1e-4, or nothing is written.
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
    )
    batch = "dynamic" if result.dynamic_batch else f"fixed at {batch_size}"
    console.print(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, batch {batch})",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"check: ONNX Runtime vs PyTorch on {result.check_source}: max |Δp| = {result.max_abs_diff:.2e} "
        f"(limit 1e-04), top-1 agreement {result.top1_agreement:.0%}",
        markup=False,
        soft_wrap=True,
    )


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
    """Serve a model over HTTP: POST /predict, GET /health, GET /model, web page at /, docs at /docs.

    Concurrent requests are micro-batched (see --max-batch, --batch-wait-ms). Ctrl-C stops it.
    """
    import uvicorn

    from imgclf.console import err_console
    from imgclf.predict import Predictor
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
# evaluate
# ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def evaluate(
    model: Annotated[
        Path, typer.Argument(help="Model folder (or a run folder holding model/).", show_default=False)
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
) -> None:
    """Audit a dataset before training: corrupt files, duplicates and leakage between splits,
    near-duplicates, the same image under two classes, imbalance, tiny or EXIF-rotated images,
    unusual modes, missing files."""
    import json as json_module

    from imgclf.console import print_audit
    from imgclf.data.audit import audit
    from imgclf.io import write_text_atomic

    result = audit(
        data,
        path_col=path_col,
        label_col=label_col,
        splits=splits or "auto",
        workers=workers,
        imbalance_threshold=imbalance,
        min_class_size=min_class_size,
    )
    print_audit(result)
    if out is not None:
        write_text_atomic(out, json_module.dumps(result.to_dict(), indent=2))
        from imgclf.console import console

        console.print(f"wrote {out}")
    if strict and result.has_errors:
        raise typer.Exit(1)


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
    from imgclf.data.show import show as show_samples

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
    augment: AugmentOption = None,
    rotation: RotationOption = None,
    width_shift: WidthShiftOption = None,
    height_shift: HeightShiftOption = None,
    shear: ShearOption = None,
    zoom: ZoomOption = None,
    hflip: HflipOption = None,
    vflip: VflipOption = None,
    brightness: BrightnessOption = None,
    contrast: ContrastOption = None,
    crop_scale: CropScaleOption = None,
    fill: FillOption = None,
    image_size: Annotated[
        str | None, typer.Option(help="Size to show the images at. \\[default: from the data]")
    ] = None,
    seed: Annotated[int, typer.Option(help="Which images and transforms are drawn.")] = 0,
) -> None:
    """Write a PNG grid: each row one image, first the original, then augmented versions."""
    from imgclf.config import resolve_config
    from imgclf.preview import write_augment_preview

    overrides = {
        "augment.preset": augment,
        "augment.rotation": rotation,
        "augment.width_shift": width_shift,
        "augment.height_shift": height_shift,
        "augment.shear": shear,
        "augment.zoom": zoom,
        "augment.hflip": hflip,
        "augment.vflip": vflip,
        "augment.brightness": brightness,
        "augment.contrast": contrast,
        "augment.crop_scale": crop_scale,
        "augment.fill": fill,
        "data.image_size": _size(image_size),
        "seed": seed,
    }
    cfg = resolve_config(config, {k: v for k, v in overrides.items() if v is not None})
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
