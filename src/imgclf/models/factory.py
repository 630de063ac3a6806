"""`create_model`: a name and arguments → nn.Module, for imgclf's builtins, any timm architecture,
and any family registered with `register_family`.

A new family of networks is one `register_family` call: its names, how to build one from
`model_args`, and its `Anatomy` (classifier, features, blocks) — nothing outside `models/` changes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from imgclf.config import ModelConfig
from imgclf.errors import ConfigError, ModelError
from imgclf.models.anatomy import Anatomy, register_anatomy
from imgclf.models.builtin import MLP, BasicCNN, ConfigurableCNN, SmallCNN
from imgclf.models.pretrained import OFFLINE_BACKBONES, architecture_name
from imgclf.registry import MODEL_FAMILIES


@dataclass(frozen=True)
class BuiltinModel:
    cls: type[nn.Module]
    description: str
    options: tuple[str, ...]  # which of filters/dense/dropout/batchnorm it takes


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "mlp": BuiltinModel(MLP, "Dense 128-64 baseline (flattened pixels)", ("dense", "dropout")),
    "cnn-small": BuiltinModel(SmallCNN, "Conv32 → pool → Dense128", ("dense", "dropout")),
    "cnn-basic": BuiltinModel(
        BasicCNN,
        "the tutorials' Conv32-32 → pool → Conv64-64 → pool → Dense512, dropout 0.5",
        ("dense", "dropout"),
    ),
    "cnn": BuiltinModel(
        ConfigurableCNN,
        "configurable: --filters 32,64,128 (2 conv + BN + pool each), global pool, --dense, --dropout",
        ("filters", "dense", "dropout", "batchnorm"),
    ),
}


@dataclass(frozen=True)
class ModelFamily:
    """Networks imgclf builds besides its builtins and timm's: `models` maps each name to its one-line
    description; `build(args)` makes a fresh network from `model_args` output (name, num_classes,
    in_channels, image_size, and dropout when given)."""

    models: dict[str, str]
    build: Callable[[dict[str, Any]], nn.Module]
    anatomy: Anatomy


FAMILIES: dict[str, ModelFamily] = {}


_FAMILY_MODULES_LOADED = False


def families() -> dict[str, ModelFamily]:
    """Every family known by model name: those registered, and those of `imgclf.models.families`
    (one module each, imported the first time a name is looked up)."""
    global _FAMILY_MODULES_LOADED
    if not _FAMILY_MODULES_LOADED:
        _FAMILY_MODULES_LOADED = True
        for name in MODEL_FAMILIES.names():
            register_family(MODEL_FAMILIES.load(name).FAMILY)
    return FAMILIES


def register_family(family: ModelFamily) -> None:
    """Make a family's names valid for `--model` (train, models, artifacts) and its anatomy known."""
    for name in family.models:
        FAMILIES[name] = family
    register_anatomy(family.anatomy)


def _timm():
    import timm

    return timm


def model_args(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: list[int]) -> dict[str, Any]:
    """The full argument set stored in the artifact, from which `create_model` rebuilds the network."""
    args: dict[str, Any] = {
        "name": cfg.name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": list(image_size),
    }
    builtin = BUILTIN_MODELS.get(cfg.name)
    if cfg.name in families():
        if cfg.dropout is not None:
            args["dropout"] = cfg.dropout
    elif builtin is not None:
        for option in builtin.options:
            value = getattr(cfg, option)
            if value is not None:
                args[option] = value
    else:
        check_model_name(cfg.name)
        given = [o for o in ("filters", "dense", "batchnorm") if getattr(cfg, o) is not None]
        if cfg.pretrained or cfg.weights:
            args["pretrained"] = True  # recorded for the user; the artifact holds the trained weights
        if given:
            raise ModelError(f"--{given[0]} shapes imgclf's builtin CNNs only, not the timm model {cfg.name}")
        if cfg.dropout is not None:
            args["dropout"] = cfg.dropout  # timm's drop_rate: on the pooled features, before the classifier
    return args


def check_model_name(name: str) -> None:
    """Raise a ConfigError with close matches when `name` is neither a builtin nor a timm model."""
    if name in BUILTIN_MODELS or name in families() or _timm().is_model(name):
        return
    names = list(BUILTIN_MODELS) + list(families()) + _timm().list_models()
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `imgclf models` lists them"
    raise ConfigError(f"unknown model {name!r}{hint}")  # a bad --model value: a usage error


def create_model(args: dict[str, Any]) -> nn.Module:
    """Build a freshly initialised network from `model_args` output (or an artifact's architecture)."""
    if args["name"] in families():
        return families()[args["name"]].build(dict(args))
    args = dict(args)
    name = args.pop("name")
    num_classes = args.pop("num_classes")
    in_channels = args.pop("in_channels")
    image_size = args.pop("image_size")
    builtin = BUILTIN_MODELS.get(name)
    if builtin is not None:
        kwargs = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if k in builtin.options
        }
        return builtin.cls(num_classes, in_channels, image_size, **kwargs)
    args.pop("pretrained", None)
    check_model_name(name)
    options = {"drop_rate": args["dropout"]} if args.get("dropout") is not None else {}
    try:
        return _timm().create_model(
            architecture_name(name),
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_channels,
            **options,
        )
    except Exception as error:  # timm raises many kinds for unsupported argument combinations
        raise ModelError(f"cannot build {name}: {error}") from error


def _pretrained_cfg(name: str):
    """timm's pretrained config of an architecture (None for imgclf's builtins and unknown names)."""
    if name in BUILTIN_MODELS or name in families():
        return None
    import timm

    return timm.get_pretrained_cfg(architecture_name(name))


def model_mean_std(name: str) -> tuple[tuple, tuple] | None:
    """The normalization a timm architecture was designed with (None for imgclf's builtins)."""
    cfg = _pretrained_cfg(name)
    if cfg is None or cfg.mean is None:
        return None
    return tuple(cfg.mean), tuple(cfg.std)


def model_interpolation(name: str) -> str | None:
    """The resampling filter a timm architecture's pretrained weights were made with (e.g. bicubic)."""
    interpolation = getattr(_pretrained_cfg(name), "interpolation", None)
    return interpolation if interpolation in ("nearest", "bilinear", "bicubic", "lanczos") else None


def list_models(pattern: str | None = None) -> list[tuple[str, str]]:
    """(name, description) of the builtins, then timm architectures matching `pattern` (fnmatch)."""
    rows = [(name, model.description) for name, model in BUILTIN_MODELS.items()]
    rows += [(name, family.models[name]) for name, family in families().items()]
    rows += [
        (name, f"timm {b.timm_name}; --pretrained loads ImageNet weights offline from {b.package}")
        for name, b in OFFLINE_BACKBONES.items()
    ]
    if pattern is None or pattern != "builtin":
        timm_names = _timm().list_models(pattern or "*")
        rows += [(name, "timm architecture") for name in timm_names if name not in OFFLINE_BACKBONES]
    if pattern not in (None, "builtin"):
        import fnmatch

        rows = [row for row in rows if fnmatch.fnmatch(row[0], pattern)]
    return rows
