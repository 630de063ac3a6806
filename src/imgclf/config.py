"""The one resolved configuration: defaults < YAML file < command-line flags.

Each section is a typed dataclass; unknown keys and wrongly typed values are a `ConfigError`.
The resolved object is saved as `config.yaml` in the run folder and passed by section to the code
that needs it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgclf.errors import ConfigError


@dataclass
class DataConfig:
    """Where the images are and how they are read, split and preprocessed."""

    source: str | None = None
    splits: str = "auto"  # auto (found by structure and names), none (sub-folders are classes), train=a,val=b
    path_col: str | None = None
    label_col: str | None = None
    classes: list[str] | None = None
    label_map: str | None = None
    val_split: float = 0.2
    test_split: float = 0.0
    manifest: str | None = None
    image_size: list[int] | None = None
    channels: int | None = None
    resize: str = "stretch"
    interpolation: str = "auto"
    normalize: str = "auto"
    cache: str = "auto"
    cache_budget_gb: float | None = None
    workers: int | None = None


@dataclass
class AugmentConfig:
    """Training augmentation, with the meaning of Keras `ImageDataGenerator`'s arguments."""

    preset: str = "auto"  # auto: the recipe's (strong for transfer, digits for small grey images, else none)
    rotation: float | None = None
    width_shift: float | None = None
    height_shift: float | None = None
    shear: float | None = None
    zoom: float | None = None
    hflip: bool | None = None
    vflip: bool | None = None
    brightness: float | None = None
    contrast: float | None = None
    crop_scale: float | None = None
    fill: str = "nearest"
    mixup: float | None = None
    cutmix: float | None = None


@dataclass
class ModelConfig:
    """Which network to build; `filters`, `dense`, `dropout` and `batchnorm` shape the builtin CNNs
    (`dropout` is also a timm model's drop_rate, and --head-only's dropout on cached features).

    `name="auto"` chooses from the data: the offline pretrained backbone for photos, a builtin CNN for
    small grey images such as digits (see `imgclf.training.recipe`)."""

    name: str = "auto"
    filters: list[int] | None = None
    dense: list[int] | None = None
    dropout: float | None = None
    batchnorm: bool | None = None
    pretrained: bool = False
    weights: str | None = None


@dataclass
class TrainConfig:
    """How the model is trained.

    The defaults are imgclf's recipe (AdamW, a warm-up then cosine decay); the tutorials' Keras
    settings are `batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0, schedule="constant",
    warmup_epochs=0`. Settings left at None are set by the recipe (`imgclf.training.recipe`), and
    the resolved values are what `config.yaml` records.
    """

    recipe: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "adamw"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    label_smoothing: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float | None = None
    class_weight: str = "none"
    monitor: str | None = None
    time_limit: float | None = None  # minutes for the whole run; 0 = none
    patience: int | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    lr_scaling: str = "none"
    lr_base_batch: int = 64
    freeze_epochs: int = 0
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    unfreeze: str | None = None
    finetune_bn: str | None = None
    head_only: bool = False


@dataclass
class OutputConfig:
    """Where the run folder goes."""

    project: str = "runs"
    name: str = "train"


@dataclass
class Config:
    """Everything a training run needs, resolved once."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0


CHOICES: dict[str, tuple[str, ...]] = {
    "data.resize": ("stretch", "crop", "pad"),
    "data.interpolation": ("auto", "nearest", "bilinear", "bicubic", "lanczos"),
    "data.normalize": ("auto", "rescale", "imagenet", "half"),
    "data.cache": ("auto", "ram", "disk", "none"),
    "augment.preset": ("auto", "none", "light", "strong", "digits"),
    "augment.fill": ("nearest", "constant", "reflect", "wrap"),
    "train.optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "train.schedule": ("constant", "cosine", "onecycle", "plateau"),
    "train.class_weight": ("none", "auto"),
    "train.monitor": (None, "val_loss", "val_acc"),
    "train.recipe": ("auto", "transfer", "plain"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.lr_scaling": ("none", "linear", "sqrt"),
    "train.finetune_bn": (None, "train", "frozen"),
}

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
    kwargs = {key: _check_type(value, hints[key], f"{where}.{key}") for key, value in values.items()}
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
    """Nested plain dicts, ready for YAML."""
    return dataclasses.asdict(cfg)


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
    cfg = config_from_dict(values)
    resolve_augment(cfg.augment)
    validate_config(cfg)
    return cfg


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
            raise ConfigError(f"{dotted} must be one of {', '.join(choices)}, got {value!r}")
    data, train, augment = cfg.data, cfg.train, cfg.augment
    if not 0.0 <= data.val_split < 1.0 or not 0.0 <= data.test_split < 1.0:
        raise ConfigError("val_split and test_split must be fractions between 0 and 1")
    if data.val_split + data.test_split >= 1.0:
        raise ConfigError("val_split + test_split must leave images for training (sum below 1)")
    if data.image_size is not None:
        if len(data.image_size) == 1:
            data.image_size = [data.image_size[0], data.image_size[0]]
        if len(data.image_size) != 2 or min(data.image_size) < 1:
            raise ConfigError("image_size is one size (32) or height,width (32,48), in pixels")
    if data.channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {data.channels}")
    if data.workers is not None and data.workers < 0:
        raise ConfigError("workers must be 0 or more")
    if train.freeze_epochs < 0 or train.finetune_epochs < 0:
        raise ConfigError("freeze_epochs and finetune_epochs must be 0 or more")
    if train.freeze_epochs > 0:  # freeze, then fine-tune: the stages make up the whole run
        train.epochs = train.freeze_epochs + train.finetune_epochs
    if train.unfreeze not in (None, "all") and not (train.unfreeze.isdigit() and int(train.unfreeze) > 0):
        raise ConfigError(f"unfreeze is 'all' or a number of final blocks, got {train.unfreeze!r}")
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
    if train.epochs is not None and train.epochs < (0 if train.recipe == "transfer" else 1):
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
    cfg = config_from_dict(load_config_file(path))
    resolve_augment(cfg.augment)
    validate_config(cfg)
    return cfg
