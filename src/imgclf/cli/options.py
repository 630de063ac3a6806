"""The command line's options, declared once: each setting's flag, help, panel and default come
from its field in `imgclf.config`. `train` offers every setting; the other commands take the ones
they share with it (the data source and its layout, the device, the batch size, the decoding
processes) through `shared`, so a flag is spelled, parsed and explained the same everywhere."""

from __future__ import annotations

import dataclasses
import functools
import inspect
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
from imgclf.registry import LOGGERS, RECIPES


def _cli_type(annotation: Any) -> type:
    """The type a setting's flag parses: bool, int or float; anything else (choices, lists, paths) is
    text that the configuration checks and converts."""
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    return options[0] if options[0] in (bool, int, float) else str


def setting_option(item: Setting) -> Any:
    """The typer option of one configuration setting: its flag, help, panel and default, as declared
    in `imgclf.config`."""
    kind = _cli_type(item.annotation)
    names = [f"{item.flag}/{item.negative or '--no-' + item.flag[2:]}" if kind is bool else item.flag]
    if item.short:
        names.append(item.short)
    default = f"\\[default: {item.default_text}]" if item.default_text else ""
    help_text = " ".join(part for part in (item.help, registry_help(item.key), default) if part)
    option = typer.Option(*names, help=help_text, rich_help_panel=item.panel or None, show_default=False)
    return Annotated[kind | None, option]


def registry_help(key: str) -> str:
    """The entries of the registry a setting names (recipes, loggers), as --help lists them: read from
    their files, without importing them."""
    if key == "train.recipe":
        return RECIPES.describe() + "."
    if key == "train.log":
        return LOGGERS.describe() + "."
    return ""


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


def with_settings(
    chosen: Callable[[Setting], bool],
    defaults: dict[str, Any] | None = None,
    *,
    source: Callable[[], list[Setting]] = settings,
    into: str = "settings",
) -> Callable[[Callable], Callable]:
    """Give a command one option per setting that `chosen` picks among `source()` (the training
    config's, or another dataclass's such as `ServeSettings`); the command receives the ones given,
    by key, in its argument `into` (each parsed as its declaration says). `defaults`: the command's
    own default for a setting (shown in --help), passed when the flag is not given."""
    defaults = defaults or {}

    def decorate(command: Callable) -> Callable:
        picked = [with_default(item, defaults[item.key]) if item.key in defaults else item
                  for item in source() if chosen(item)]  # fmt: skip
        by_param = {item.param: item for item in picked}
        signature = inspect.signature(command, eval_str=True)
        own = [param for param in signature.parameters.values() if param.name != into]
        generated = [
            inspect.Parameter(
                item.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=setting_option(item)
            )
            for item in picked
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given: dict[str, Any] = dict(defaults)
            for name in [name for name in kwargs if name in by_param]:
                value, item = kwargs.pop(name), by_param[name]
                if value is not None:
                    given[item.key] = item.parse(value) if item.parse else value
            return command(**kwargs, **{into: given})

        arguments = [param for param in own if _panel(param) is None]
        keyword = inspect.Parameter.KEYWORD_ONLY
        own_options = [param.replace(kind=keyword) for param in own if _panel(param) is not None]
        options = sorted(own_options + generated, key=_panel_rank)
        parameters = [*arguments, *options]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
        return wrapper

    return decorate


def with_aliases(**aliases: str) -> Callable[[Callable], Callable]:
    """Hidden old or foreign spellings of a command's options, e.g. `with_aliases(top_k="--top_k")`:
    each takes the same value as the option it names and is left out of --help. A renamed flag keeps
    its old name this way, and the tutorials' spellings (`--top_k`, `--category_names`) work."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        params = dict(signature.parameters)
        added = []
        for number, (target, flag) in enumerate(aliases.items()):
            kind = typing.get_args(params[target].annotation)[0]
            option = typer.Option(flag, hidden=True, show_default=False)
            added.append(
                inspect.Parameter(
                    f"alias_{number}", inspect.Parameter.KEYWORD_ONLY, default=None,
                    annotation=Annotated[kind | None, option],
                )
            )  # fmt: skip

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for number, target in enumerate(aliases):
                value = kwargs.pop(f"alias_{number}", None)
                if value is not None:
                    kwargs[target] = value
            return command(**kwargs)

        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters = [p for p in params.values() if p.kind != keyword]
        parameters += [p for p in params.values() if p.kind == keyword] + added
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
        return wrapper

    return decorate


def with_default(item: Setting, default: Any) -> Setting:
    """The setting as another command than `train` offers it: with that command's default (as
    --help shows it), among the command's own options rather than in a training panel."""
    shown = item.default_text if default == item.default else ("" if default is None else str(default))
    return dataclasses.replace(item, default=default, shown=shown, panel="")


# the settings other commands share with `train`
DATA_SOURCE = ("data.path_col", "data.label_col", "data.images", "data.multi_label", "data.splits")
DEVICE = ("train.device",)
BATCH_SIZE = ("train.batch_size",)
WORKERS = ("data.workers",)


def shared(*groups: tuple[str, ...], **defaults: Any) -> Callable[[Callable], Callable]:
    """The options of these settings (e.g. `shared(DATA_SOURCE, DEVICE, batch_size=128)`), from their
    config fields; the command receives every one of them, given or its default, in `settings`."""
    keys = {key for group in groups for key in group}
    unknown = set(defaults) - {setting_name(key) for key in keys}
    if unknown:
        raise TypeError(f"shared(): {sorted(unknown)[0]} is not one of the settings asked for")
    own = {key: defaults[setting_name(key)] for key in keys if setting_name(key) in defaults}
    declared = {item.key: item.default for item in settings() if item.key in keys}
    return with_settings(lambda item: item.key in keys, {**declared, **own})


def setting_name(key: str) -> str:
    """The argument name of a shared setting in `api` calls: "data.path_col" → "path_col"."""
    return key.split(".")[-1]


def shared_values(values: dict[str, Any], *groups: tuple[str, ...]) -> dict[str, Any]:
    """The shared settings as `api` keyword arguments (batch_size=…, device=…, path_col=…)."""
    keys = [key for group in groups for key in group]
    return {setting_name(key): values[key] for key in keys if key in values}


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


# the arguments several commands take
DataArgument = Annotated[str, typer.Argument(help="Any data source `train` accepts.", show_default=False)]
ModelFolderArgument = Annotated[
    Path, typer.Argument(help="Model folder (or a run folder holding model/).", show_default=False)
]
ModelArgument = Annotated[
    Path,
    typer.Argument(
        help="Model folder, run folder holding model/, or exported .onnx file.", show_default=False
    ),
]
InputsArgument = Annotated[
    list[str],
    typer.Argument(help="Image files, folders (searched recursively) or globs.", show_default=False),
]
TtaOption = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average each image's probabilities with its mirror image's "
        "(twice the compute; for models trained with --hflip).",
    ),
]
