"""The one resolved configuration: defaults < YAML file < command-line flags < what `auto` chooses.

Each section is a typed dataclass; unknown keys and wrongly typed values are a `ConfigError`.
`resolve_config` merges the first three and freezes the result; the training recipe
(`imgclf.training.recipe.resolve_recipe`) makes a new frozen config with its choices filled in, and
nothing changes it after that: setting a field of a frozen config raises `FrozenInstanceError`.
What a run decides later (the planned epochs, the calibration) is run state and records, not
config. The resolved object is saved as `config.yaml` by the run folder and passed by section to the
code that needs it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from imgclf.errors import ConfigError

# The help panels of `imgclf train --help`.
DATA_PANEL = "Data flags"
AUGMENT_PANEL = "Augmentation (Keras ImageDataGenerator meanings)"
MODEL_PANEL = "Model"
TRAIN_PANEL = "Training"
OUTPUT_PANEL = "Output"


class FrozenList(tuple):
    """A list setting of a frozen config: it reads, compares (`== [32, 32]`) and prints as the list
    it was, and cannot change in place (no append, no item assignment)."""

    __hash__ = tuple.__hash__

    def __eq__(self, other: object) -> bool:
        return list(self) == other if isinstance(other, list) else tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        return repr(list(self))


class Freezable:
    """A config section that can be frozen once resolved: then any change is an error (a bug: what a
    run decides belongs in its state and records)."""

    _frozen = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise dataclasses.FrozenInstanceError(
                f"the configuration is resolved and frozen: cannot set {type(self).__name__}.{name}"
            )
        object.__setattr__(self, name, value)

    def freeze(self) -> None:
        """Freeze this section and those it holds; lists become tuples, which cannot change in place."""
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if isinstance(value, Freezable):
                value.freeze()
            elif isinstance(value, list):
                object.__setattr__(self, item.name, FrozenList(value))
        object.__setattr__(self, "_frozen", True)

    @property
    def frozen(self) -> bool:
        return self._frozen


def setting(
    default: Any,
    help: str,
    panel: str,
    *,
    flag: str | None = None,
    short: str | None = None,
    shown: str | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    negative: str | None = None,
    minimum: float | None = None,
    above: float | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """One setting, declared once: its default, and how the command line offers it.

    The type (with `Literal[...]` for a choice) is the field's annotation. `flag` is the option's
    name (default: --the-field-name), `short` an alias (-e), `shown` the default as --help shows it
    when a recipe sets it ("" shows none; None: the default itself, unless that is None), `parse`
    turns the flag's text into the value, `cli=False` keeps the setting off the command line,
    `negative` names the flag that sets a bool False (default: --no-the-field-name); `minimum` and
    `above` bound a number (checked where the settings are, e.g. `ServeSettings.check`);
    `default_factory` makes the default when one is needed (then `shown` says what it is).
    `imgclf.cli` builds the options of `train`, `augment-preview` and `serve` from these fields.
    """
    metadata = {
        "help": help,
        "panel": panel,
        "flag": flag,
        "short": short,
        "shown": shown,
        "negative": negative,
    }
    metadata = {**metadata, "parse": parse, "cli": cli, "minimum": minimum, "above": above}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_size(text: str) -> list[int]:
    """ "32" → [32]; "32,48" or "32x48" → [32, 48] (height, width)."""
    parts = str(text).lower().replace("x", ",").split(",")
    try:
        return [int(part) for part in parts if part.strip()]
    except ValueError:
        raise ConfigError(f"image size {text!r}: give one size (32) or height,width (32,48)") from None


@dataclass
class DataConfig(Freezable):
    """Where the images are and how they are read, split and preprocessed."""

    source: str | None = setting(
        None, "Folder, CSV/TSV, archive, Parquet set or IDX files (the DATA argument).", DATA_PANEL, cli=False
    )
    splits: str = setting(
        "auto",
        "Which folders (or tables, or Parquet splits) are splits: auto (folders holding the same class "
        "folders, named by their words: training_set, seg_test, Validation …) | none (the sub-folders "
        "are classes) | train=FOLDER,val=FOLDER,test=FOLDER (train=A.csv,… for tables; "
        "train=NAME,… for a Parquet set's split names).",
        DATA_PANEL,
    )
    path_col: str | None = setting(
        None, "CSV column with image paths (a Parquet set's image column).", DATA_PANEL, shown="auto"
    )
    label_col: str | None = setting(None, "CSV (or Parquet) column with labels.", DATA_PANEL, shown="auto")
    multi_label: bool | None = setting(
        None,
        "A table whose images carry several labels each (a label column joining them with a space, "
        "|, ; or a quoted comma, or one 0/1 column per label); --single-label reads every label "
        "column value as one class.",
        DATA_PANEL,
        negative="--single-label",
        shown="found from the table",
    )
    images: str | None = setting(
        None,
        "Folder holding the images a CSV names.",
        DATA_PANEL,
        shown="beside the CSV, else the folder beside it that holds them: train/, images/ …",
    )
    classes: list[str] | None = setting(
        None, "Comma-separated class order (others are left out).", DATA_PANEL
    )
    label_map: str | None = setting(
        None, "JSON of display names (keys: class names or 1-based indices).", DATA_PANEL
    )
    val_split: float = setting(0.2, "Validation fraction carved from training data.", DATA_PANEL)
    test_split: float = setting(0.0, "Test fraction carved when the data has no test folder.", DATA_PANEL)
    manifest: str | None = setting(None, "Reuse the split of a manifest.csv (path,label,split).", DATA_PANEL)
    review: str | None = setting(
        None,
        "The decisions of `imgclf review` (review.jsonl) read over the data: relabelled images get their "
        "new class, excluded ones are left out, newly labelled ones join training; no file moves.",
        DATA_PANEL,
    )
    image_size: list[int] | None = setting(
        None,
        "Model input size: 32 or 32,48 (height,width).",
        DATA_PANEL,
        shown="from the data",
        parse=parse_size,
    )
    channels: int | None = setting(None, "1 or 3.", DATA_PANEL, shown="1 if every image is grayscale")
    resize: Literal["stretch", "crop", "pad"] = setting("stretch", "stretch | crop | pad.", DATA_PANEL)
    interpolation: Literal["auto", "nearest", "bilinear", "bicubic", "lanczos"] = setting(
        "auto",
        "auto (a pretrained backbone's own filter, e.g. bicubic for EfficientNet-Lite; else bilinear) | "
        "nearest | bilinear | bicubic | lanczos.",
        DATA_PANEL,
    )
    normalize: Literal["auto", "rescale", "imagenet", "half"] = setting(
        "auto", "auto | rescale (x/255) | half (to -1..1) | imagenet.", DATA_PANEL
    )
    cache: Literal["auto", "ram", "disk", "none"] = setting(
        "auto",
        "auto | ram | disk | none: decode once into RAM, or into a memory-mapped file in the cache folder "
        "(auto: RAM when it fits the budget, else disk; both kept for the next run), or decode every batch.",
        DATA_PANEL,
    )
    cache_budget_gb: float | None = setting(
        None,
        "GiB of RAM the image cache may take.",
        DATA_PANEL,
        flag="--cache-budget",
        shown="half of the available memory",
    )
    workers: int | None = setting(None, "Decoding processes.", DATA_PANEL, shown="cores, at most 8")


@dataclass
class AugmentConfig(Freezable):
    """Training augmentation, with the meaning of Keras `ImageDataGenerator`'s arguments.

    Settings left at None are filled from the preset (`resolve_augment`)."""

    preset: Literal["auto", "none", "light", "strong", "digits"] = setting(
        "auto",
        "Preset: auto (the recipe's: strong for recipe transfer; for the CNN chosen for many small images, "
        "digits when they are grey, light when in colour; else none) | none | light | strong | digits "
        "(shifts, zoom, rotation; no flips). Flags below override it.",
        AUGMENT_PANEL,
        flag="--augment",
    )
    rotation: float | None = setting(None, "Rotation range in degrees (rotation_range).", AUGMENT_PANEL)
    width_shift: float | None = setting(None, "Horizontal shift, fraction of width.", AUGMENT_PANEL)
    height_shift: float | None = setting(None, "Vertical shift, fraction of height.", AUGMENT_PANEL)
    shear: float | None = setting(None, "Shear angle range in degrees, as Keras' shear_range.", AUGMENT_PANEL)
    zoom: float | None = setting(None, "Zoom range: x and y zoom drawn from [1-z, 1+z].", AUGMENT_PANEL)
    hflip: bool | None = setting(None, "Random horizontal flips.", AUGMENT_PANEL)
    vflip: bool | None = setting(None, "Random vertical flips.", AUGMENT_PANEL)
    brightness: float | None = setting(None, "Brightness factor drawn from [1-b, 1+b].", AUGMENT_PANEL)
    contrast: float | None = setting(None, "Contrast factor drawn from [1-c, 1+c].", AUGMENT_PANEL)
    crop_scale: float | None = setting(
        None,
        "Random-resized crop: each crop keeps a random share of the area between this and 1 (aspect ratio "
        "3/4 to 4/3) and is stretched to the full size, as torchvision's RandomResizedCrop; 1 = off. "
        "Training images are then cached 1.15x the model size when they are that large, so crops keep "
        "their detail.",
        AUGMENT_PANEL,
    )
    fill: Literal["nearest", "constant", "reflect", "wrap"] = setting(
        "nearest", "Fill outside the image: nearest | constant | reflect | wrap.", AUGMENT_PANEL
    )
    mixup: float | None = setting(
        None,
        "MixUp: blend each training batch with itself reversed, weight ~ Beta(a, a) per batch (timm's "
        "mixup_alpha; 0.2-0.4 is usual; 0 = off).",
        AUGMENT_PANEL,
    )
    cutmix: float | None = setting(
        None,
        "CutMix: paste a box of the reversed batch, its area share ~ Beta(a, a) per batch (timm's "
        "cutmix_alpha; 1.0 is usual; 0 = off). With --mixup, each batch gets one of them.",
        AUGMENT_PANEL,
    )


@dataclass
class ModelConfig(Freezable):
    """Which network to build; `filters`, `dense`, `dropout` and `batchnorm` shape the builtin CNNs
    (`dropout` is also a timm model's drop_rate, and --head-only's dropout on cached features).

    `name="auto"` chooses from the data: the offline pretrained backbone, or a builtin CNN for many
    small images such as digits (see `imgclf.training.recipe`)."""

    name: str = setting(
        "auto",
        "auto (efficientnet_lite0 with ImageNet weights; 10,000 or more small images such as digits: cnn "
        "from scratch; says which and why) | mlp | cnn-small | cnn-basic | cnn | efficientnet_lite0 | "
        "any timm name (see `imgclf models`).",
        MODEL_PANEL,
        flag="--model",
        short="-m",
    )
    filters: list[int] | None = setting(None, "cnn: filters per block, e.g. 32,64,128.", MODEL_PANEL)
    dense: list[int] | None = setting(
        None, "Dense layer sizes before the classifier, e.g. 512 or 128,64.", MODEL_PANEL
    )
    dropout: float | None = setting(
        None,
        "Dropout rate: in the builtin CNNs' dense layers; for timm models on the pooled features before "
        "the classifier (timm's drop_rate); with --head-only on the cached features (default 0.5).",
        MODEL_PANEL,
    )
    batchnorm: bool | None = setting(None, "cnn: BatchNorm after convs.", MODEL_PANEL)
    pretrained: bool = setting(
        False,
        "Start from ImageNet weights: efficientnet_lite0 offline, other timm models from the hub (or its "
        "cache).",
        MODEL_PANEL,
        shown="",
    )
    weights: str | None = setting(None, "Start from this weights file (.safetensors, .pth).", MODEL_PANEL)


@dataclass
class TrainConfig(Freezable):
    """How the model is trained.

    The defaults are imgclf's recipe (AdamW, a warm-up then cosine decay); the tutorials' Keras
    settings are `batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0, schedule="constant",
    warmup_epochs=0`. Settings left at None are set by the recipe (`imgclf.training.recipe`), and
    the resolved values are what `config.yaml` records.
    """

    recipe: str = setting(
        "auto",
        "auto (transfer for a pretrained backbone, else plain; says which and why) or one of the recipes "
        "listed here.",
        TRAIN_PANEL,
    )
    epochs: int | None = setting(
        None,
        "Epochs (recipe transfer: fine-tuning epochs after the head; 0 keeps the head alone).",
        TRAIN_PANEL,
        short="-e",
        shown="plain 10; transfer: planned from the data and the time limit",
    )
    batch_size: int | None = setting(
        None,
        "Images per batch (a training step; a forward pass elsewhere).",
        TRAIN_PANEL,
        short="-b",
        shown="plain 64, transfer 32",
    )
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = setting(
        "adamw", "adam | adamw | sgd | rmsprop.", TRAIN_PANEL
    )
    lr: float | None = setting(
        None, "Learning rate (recipe transfer: the head's).", TRAIN_PANEL, shown="plain 2e-3, transfer 1e-3"
    )
    momentum: float = setting(0.9, "sgd momentum.", TRAIN_PANEL)
    nesterov: bool = setting(False, "sgd with Nesterov momentum.", TRAIN_PANEL, shown="")
    weight_decay: float = setting(0.01, "AdamW's decoupled weight decay (L2 for the others).", TRAIN_PANEL)
    label_smoothing: float | None = setting(
        None, "Share of each label spread over all classes.", TRAIN_PANEL, shown="plain 0, transfer 0.1"
    )
    schedule: Literal["constant", "cosine", "onecycle", "plateau"] = setting(
        "cosine", "constant | cosine | onecycle | plateau.", TRAIN_PANEL
    )
    warmup_epochs: float | None = setting(
        None, "Linear warm-up length (constant, cosine).", TRAIN_PANEL, shown="plain 1, transfer 0.3"
    )
    class_weight: Literal["none", "auto"] = setting(
        "none", "auto (balanced; multi-label: positive weights for rare labels) | none.", TRAIN_PANEL
    )
    monitor: Literal["val_loss", "val_acc", "val_map"] | None = setting(
        None,
        "val_loss | val_acc (ties broken by val_loss) | val_map (multi-label: mean average precision): "
        "picks the best model.",
        TRAIN_PANEL,
        shown="plain val_loss, transfer val_acc, multi-label val_map",
    )
    time_limit: float | None = setting(
        None,
        "Minutes for the whole run: no epoch starts that would end after it (the best epoch is kept); "
        "recipe transfer plans its fine-tuning epochs to fit. 0 = none.",
        TRAIN_PANEL,
        shown="transfer on the CPU: 3 min per 2,000 images, at least 3; else none",
    )
    patience: int | None = setting(
        None,
        "Early stop after this many epochs without improvement (restores the best).",
        TRAIN_PANEL,
        shown="transfer with planned epochs: 2 epochs that neither beat the best nor improve",
    )
    min_precision: float | None = setting(
        None,
        "Answer `unknown` rather than guess: the confidence threshold that keeps precision ≥ P on the "
        "validation split, and a likeness-to-the-training-images test that keeps 98% of it, are stored "
        "with the model (predict, serve and the exports apply them). Multi-label: each label's "
        "threshold is the lowest that keeps its precision ≥ P on validation.",
        TRAIN_PANEL,
        shown="none: always answer a class; multi-label: the F1-best threshold per label",
    )
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.", TRAIN_PANEL)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto",
        "auto (bf16 on CUDA, and on processors with native bf16: AVX-512 BF16, AMX) | fp32 | bf16.",
        TRAIN_PANEL,
    )
    channels_last: bool | None = setting(
        None, "Channels-last memory format (None: on, except for the mlp).", TRAIN_PANEL, cli=False
    )
    compile: bool = setting(
        False,
        "Run training steps through torch.compile (faster steps after a one-time compile; needs gcc on "
        "the CPU).",
        TRAIN_PANEL,
        shown="",
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = setting(
        "none",
        "none | linear | sqrt: scale --lr by (batch size × processes) / --lr-base-batch, so larger batches "
        "keep accuracy.",
        TRAIN_PANEL,
    )
    lr_base_batch: int = setting(64, "The batch size --lr is meant for.", TRAIN_PANEL)
    freeze_epochs: int = setting(
        0,
        "The staged recipe (--recipe staged): train only the new head on the frozen backbone for this many "
        "epochs, then fine-tune.",
        MODEL_PANEL,
        shown="",
    )
    finetune_epochs: int = setting(
        0,
        "The staged recipe's second stage: fine-tune for this many epochs (--epochs, when given, is the "
        "whole run: freeze + finetune).",
        MODEL_PANEL,
        shown="",
    )
    finetune_lr: float | None = setting(
        None,
        "The backbone's learning rate when fine-tuning (stage 2; recipe transfer).",
        MODEL_PANEL,
        shown="lr / 10; transfer: lr × 0.3",
    )
    unfreeze: str | None = setting(
        None,
        "Fine-tuning trains: all | N (the classifier and the last N blocks; the frozen part runs without "
        "gradients).",
        MODEL_PANEL,
        shown="transfer 3, else all",
    )
    finetune_size: int | None = setting(
        None,
        "Recipe transfer: the short side, in pixels, that fine-tuning epochs train at before the last one, "
        "which trains at the model's size (validation always runs at the model's size). 0 = the model's "
        "size throughout.",
        MODEL_PANEL,
        shown="0",
    )
    finetune_bn: Literal["train", "frozen"] | None = setting(
        None,
        "Stage 2 BatchNorm statistics: train (they follow the new data) | frozen (the ImageNet statistics "
        "stay, as in the Keras transfer-learning guide; the layers' scale and shift still learn).",
        MODEL_PANEL,
        shown="frozen with recipe transfer, else train",
    )
    head_only: bool = setting(
        False,
        "The head-only recipe (--recipe head-only): a linear head on bottleneck features computed once "
        "(seconds); saves the whole model.",
        MODEL_PANEL,
        shown="",
    )
    log: list[str] | None = setting(
        None,
        "Also send each epoch's numbers to these loggers (comma-separated, listed here); metrics.csv and "
        "curves.png are always written.",
        OUTPUT_PANEL,
        shown="",
    )


@dataclass
class OutputConfig(Freezable):
    """Where the run folder goes."""

    project: str = setting("runs", "Folder that holds run folders.", OUTPUT_PANEL)
    name: str = setting("train", "Run folder name; -2, -3 … appended if taken.", OUTPUT_PANEL)


@dataclass
class Config(Freezable):
    """Everything a training run needs, resolved once."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = setting(0, "Seed of the split, initialisation and shuffling.", DATA_PANEL)


SECTIONS = ("data", "augment", "model", "train", "output")


@dataclass(frozen=True)
class Setting:
    """One setting as the command line offers it (see `setting`)."""

    key: str  # dotted: "train.lr"; "seed"
    annotation: Any
    default: Any
    help: str
    panel: str
    flag: str
    short: str | None
    shown: str | None
    parse: Callable[[str], Any] | None
    negative: str | None = None  # a bool's flag for False (default --no-FLAG)

    @property
    def choices(self) -> tuple[Any, ...]:
        """The values a `Literal` setting allows (None among them when it may be unset), else ()."""
        return _literal_choices(self.annotation)

    @property
    def param(self) -> str:
        """The Python parameter name of the flag: --cache-budget → cache_budget."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default_text(self) -> str:
        """The default as --help shows it ("" for none)."""
        if self.shown is not None:
            return self.shown
        return "" if self.default is None else str(self.default)


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found: tuple[Any, ...] = ()
        for arg in typing.get_args(annotation):
            found += (None,) if arg is type(None) else _literal_choices(arg)
        return found if any(choice is not None for choice in found) else ()
    return ()


def settings(cli_only: bool = True) -> list[Setting]:
    """Every setting of Config in declaration order (section by section, then seed); with `cli_only`
    those the command line offers."""
    hints = typing.get_type_hints(Config)
    found = []
    for section, cls in [*((name, hints[name]) for name in SECTIONS), ("", Config)]:
        found += declared_settings(cls, section, cli_only)
    return found


def declared_settings(cls: type, section: str = "", cli_only: bool = True) -> list[Setting]:
    """The settings a dataclass declares with `setting()` (keyed "section.field", or "field"), in
    declaration order; with `cli_only` those the command line offers."""
    field_hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        meta = item.metadata
        if "help" not in meta or (cli_only and not meta["cli"]):
            continue
        found.append(
            Setting(
                key=f"{section}.{item.name}" if section else item.name,
                annotation=field_hints[item.name],
                default=None if item.default is dataclasses.MISSING else item.default,
                help=meta["help"],
                panel=meta["panel"],
                flag=meta["flag"] or "--" + item.name.replace("_", "-"),
                short=meta["short"],
                shown=meta["shown"],
                parse=meta["parse"],
                negative=meta["negative"],
            )
        )
    return found


# The allowed values of every choice, from the `Literal` annotations.
CHOICES: dict[str, tuple[Any, ...]] = {item.key: item.choices for item in settings(False) if item.choices}


# What the presets set; explicit flags win over them.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"rotation": 10.0, "width_shift": 0.1, "height_shift": 0.1, "zoom": 0.1, "hflip": True},
    # small grey images such as digits: shifts, zoom and a little rotation, never mirrored
    "digits": {"rotation": 10.0, "width_shift": 0.1, "height_shift": 0.1, "zoom": 0.1},
    "strong": {
        "rotation": 30.0,
        "width_shift": 0.2,
        "height_shift": 0.2,
        "shear": 10.0,
        "zoom": 0.2,
        "hflip": True,
        "brightness": 0.2,
        "contrast": 0.2,
    },
}
AUGMENT_OFF: dict[str, Any] = {
    "rotation": 0.0,
    "width_shift": 0.0,
    "height_shift": 0.0,
    "shear": 0.0,
    "zoom": 0.0,
    "hflip": False,
    "vflip": False,
    "brightness": 0.0,
    "contrast": 0.0,
    "crop_scale": 1.0,
    "mixup": 0.0,
    "cutmix": 0.0,
}


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` coerced to `annotation` where that is lossless, else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value in allowed:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(item, item_type, where) for item in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, os.PathLike):  # a pathlib.Path from Python, for the folders and files
            return os.fspath(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected text, got {value!r}")
    raise ConfigError(f"{where}: unsupported value {value!r}")


def _section_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; known keys: {', '.join(sorted(names))}")
    parsers = {f.name: f.metadata.get("parse") for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        parse = parsers[key]
        if parse is not None and isinstance(value, str):  # the flag's spelling, from YAML or Python too
            value = parse(value)
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from nested dicts (as in config.yaml); unknown keys are an error."""
    if not isinstance(values, dict):
        raise ConfigError("the configuration must be a mapping of sections (data, model, train …)")
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(Config))
            raise ConfigError(f"unknown configuration section {key!r}; known: {known}")
        if dataclasses.is_dataclass(hints[key]):
            sections[key] = _section_from_dict(hints[key], value or {}, key)
        else:
            sections[key] = _check_type(value, hints[key], key)
    return Config(**sections)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dicts and lists (a copy), ready for YAML."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {k: _as_list(v) for k, v in items})


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def merge_dicts(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge; `override` wins, None values in `override` are ignored."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_to_nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.1} → {"train": {"lr": 0.1}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file into nested dicts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}".splitlines()[0]) from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, train …)")
    return values


def resolve_config(
    file: str | Path | None = None, overrides: dict[str, Any] | None = None, base: Config | None = None
) -> Config:
    """Defaults (or `base`) < YAML file < overrides (dotted keys like "train.lr", or nested dicts)."""
    values = config_to_dict(base or Config())
    if file is not None:
        values = merge_dicts(values, load_config_file(file))
    if overrides:
        flat = {k: v for k, v in overrides.items() if "." in k}
        nested = {k: v for k, v in overrides.items() if "." not in k}
        values = merge_dicts(values, merge_dicts(nested, dotted_to_nested(flat)))
    return complete_config(config_from_dict(values))


def thaw_config(cfg: Config) -> Config:
    """A changeable copy of a config (to resolve further: `complete_config` freezes it again)."""
    return config_from_dict(config_to_dict(cfg))


def complete_config(cfg: Config) -> Config:
    """Fill what follows from the settings given (the augmentation preset's values, one size for
    both sides), check everything, and freeze the config (its lists become `FrozenList`s)."""
    resolve_augment(cfg.augment)
    data = cfg.data
    if data.image_size is not None and len(data.image_size) == 1:
        data.image_size = [data.image_size[0], data.image_size[0]]
    validate_config(cfg)
    cfg.freeze()
    return cfg


def resolve_data_config(given: DataConfig | None, options: dict[str, Any]) -> DataConfig:
    """How an `api` call reads its data: `given` (a DataConfig), with keyword options named as its
    fields (`path_col`, `label_col`, `images`, `multi_label`, `splits`, `workers` …) over it, each
    checked and parsed as in YAML; an unknown keyword is a TypeError, as Python's own would be."""
    names = {item.name for item in dataclasses.fields(DataConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        known = ", ".join(sorted(names))
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (not a data setting: {known})")
    values = config_to_dict(Config(data=given))["data"] if given is not None else {}
    values.update({key: value for key, value in options.items() if value is not None})
    data = _section_from_dict(DataConfig, values, "data")
    if data.image_size is not None and len(data.image_size) == 1:
        data.image_size = [data.image_size[0], data.image_size[0]]
    return data


def setting_section(key: str) -> str:
    """The section a bare setting name belongs to ("lr" → "train"); ConfigError if none."""
    for section in (DataConfig, AugmentConfig, ModelConfig, TrainConfig, OutputConfig):
        if key in {f.name for f in dataclasses.fields(section)}:
            return section.__name__.removesuffix("Config").lower()
    raise ConfigError(f"unknown setting {key!r}")


def resolve_augment(augment: AugmentConfig) -> None:
    """Fill the settings the user left unset from the preset (or switch them off).

    The preset "auto" fills nothing yet: the training recipe picks a preset once it has seen the data.
    """
    if augment.preset == "auto":
        return
    if augment.preset not in AUGMENT_PRESETS:
        raise ConfigError(
            f"augment.preset must be one of auto, {', '.join(AUGMENT_PRESETS)}, got {augment.preset!r}"
        )
    preset = {**AUGMENT_OFF, **AUGMENT_PRESETS[augment.preset]}
    for key, value in preset.items():
        if getattr(augment, key) is None:
            setattr(augment, key, value)


def validate_config(cfg: Config) -> None:
    """Check value ranges and choices; raise ConfigError with the fix.

    Settings the recipe has not set yet (None, the model "auto") are checked once it has.
    """
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            shown = ", ".join(str(choice) for choice in choices if choice is not None)
            raise ConfigError(f"{dotted} must be one of {shown}, got {value!r}")
    data, train, augment = cfg.data, cfg.train, cfg.augment
    if not 0.0 <= data.val_split < 1.0 or not 0.0 <= data.test_split < 1.0:
        raise ConfigError("val_split and test_split must be fractions between 0 and 1")
    if data.val_split + data.test_split >= 1.0:
        raise ConfigError("val_split + test_split must leave images for training (sum below 1)")
    if data.image_size is not None and (len(data.image_size) != 2 or min(data.image_size) < 1):
        raise ConfigError("image_size is one size (32) or height,width (32,48), in pixels")
    if data.channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {data.channels}")
    if data.workers is not None and data.workers < 0:
        raise ConfigError("workers must be 0 or more")
    if train.freeze_epochs < 0 or train.finetune_epochs < 0:
        raise ConfigError("freeze_epochs and finetune_epochs must be 0 or more")
    if train.unfreeze not in (None, "all") and not (train.unfreeze.isdigit() and int(train.unfreeze) > 0):
        raise ConfigError(f"unfreeze is 'all' or a number of final blocks, got {train.unfreeze!r}")
    if train.finetune_size is not None and train.finetune_size < 0:
        raise ConfigError("finetune_size is a side in pixels: 0 (the model's size) or more")
    if train.finetune_lr is not None and train.finetune_lr <= 0:
        raise ConfigError("finetune_lr must be positive")
    pretrained = cfg.model.pretrained or cfg.model.weights or cfg.model.name == "auto"
    if train.head_only and not pretrained:
        raise ConfigError(
            "head_only trains a head on a pretrained backbone: add --pretrained (or --weights PATH)"
        )
    if train.finetune_bn == "frozen" and not pretrained:
        raise ConfigError(
            "finetune_bn frozen keeps pretrained BatchNorm statistics: add --pretrained (or --weights PATH)"
        )
    if train.epochs is not None and train.epochs < (0 if train.recipe in ("transfer", "auto") else 1):
        raise ConfigError("epochs must be at least 1 (recipe transfer: 0 keeps the head alone)")
    if train.batch_size is not None and train.batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    if train.lr is not None and train.lr <= 0:
        raise ConfigError("lr (learning rate) must be positive")
    if train.label_smoothing is not None and not 0.0 <= train.label_smoothing < 1.0:
        raise ConfigError("label_smoothing must be in [0, 1)")
    if train.patience is not None and train.patience < 1:
        raise ConfigError("patience must be at least 1 epoch")
    if train.warmup_epochs is not None and train.warmup_epochs < 0:
        raise ConfigError("warmup_epochs must be 0 or more")
    if train.time_limit is not None and train.time_limit < 0:
        raise ConfigError("time_limit is minutes for the whole run: 0 (none) or more")
    if train.min_precision is not None and not 0.0 <= train.min_precision <= 1.0:
        raise ConfigError("min_precision is a share of right answers, in [0, 1]: e.g. 0.95")
    _validate_augment(augment)
    if train.head_only and (augment.mixup or augment.cutmix):
        raise ConfigError("mixup and cutmix mix images; head_only trains on features: leave them off")
    if cfg.model.dropout is not None and not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError("dropout must be in [0, 1)")


def _validate_augment(augment: AugmentConfig) -> None:
    for key in ("rotation", "shear"):
        if (getattr(augment, key) or 0) < 0:
            raise ConfigError(f"augment.{key} is a range in degrees and must be 0 or more")
    for key in ("width_shift", "height_shift", "zoom", "brightness", "contrast"):
        value = getattr(augment, key)
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f"augment.{key} must be a fraction in [0, 1), got {value}")
    if augment.crop_scale is not None and not 0.0 < augment.crop_scale <= 1.0:
        raise ConfigError(
            f"augment.crop_scale is the smallest share of the image a crop keeps, in (0, 1], "
            f"got {augment.crop_scale}"
        )
    for key in ("mixup", "cutmix"):
        if (getattr(augment, key) or 0) < 0:
            raise ConfigError(f"augment.{key} is the alpha of a Beta(alpha, alpha) draw: 0 (off) or more")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from imgclf.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def load_config(path: str | Path) -> Config:
    """Read a saved config.yaml back into a validated Config."""
    return complete_config(config_from_dict(load_config_file(path)))
