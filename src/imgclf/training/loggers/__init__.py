"""Training loggers: where a run's numbers go as it trains, one module each, found by file name.

A logger module declares `create_logger(cfg, folder)`, which returns a callback on the event list
(`imgclf.training.events`): it reads the `TrainState` at on_epoch_end (losses, accuracy, learning
rate, images/s, seconds) and at on_train_end, and writes where it says. It raises an `ImgclfError`
at start when it cannot work (a missing optional package), never at the end of training. Its
docstring's first line is what `--log` lists. The `csv` logger (metrics.csv and curves.png in the
run folder) always runs: the run's report and `Run.history` read it.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import TYPE_CHECKING, Any

from imgclf.errors import UsageError
from imgclf.registry import LOGGERS

if TYPE_CHECKING:
    from imgclf.config import Config, TrainConfig
    from imgclf.runs import RunFolder
    from imgclf.training.events import Callback

ALWAYS = "csv"


def logger_names(train: TrainConfig) -> list[str]:
    """The loggers a run writes to: csv, then those `--log` names, each once."""
    names = [ALWAYS, *(name.strip().replace("_", "-") for name in train.log or [])]
    return list(dict.fromkeys(name for name in names if name))


def check_loggers(train: TrainConfig) -> None:
    """Before any work: a ConfigError for a logger there is none of; each logger's own `check()`
    (where it has one) refuses what it cannot do, such as a missing optional package."""
    for name in logger_names(train):
        module = LOGGERS.load(name)
        if hasattr(module, "check"):
            module.check()


def create_loggers(cfg: Config, folder: RunFolder) -> list[Callback]:
    """The callbacks of the run's loggers."""
    return [LOGGERS.load(name).create_logger(cfg, folder) for name in logger_names(cfg.train)]


# what the logger modules share
def require_extra(flag: str, extra: str, *modules: str) -> None:
    """A logger's `check()`: a one-line UsageError naming `extra` when one of `modules` is missing."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{flag} needs the optional packages: pip install 'imgclf[{extra}]'") from None


def finite_number(value: Any) -> bool:
    """Whether a metric's value is a finite number a dashboard can plot (not a bool, NaN or text)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flat_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as dotted keys ("train.lr": 0.001), as dashboards take parameters."""
    from imgclf.config import config_to_dict

    flat: dict[str, Any] = {}
    pending = [("", config_to_dict(cfg))]
    while pending:
        prefix, values = pending.pop(0)
        for key, value in values.items():
            if isinstance(value, dict):
                pending.append((f"{prefix}{key}.", value))
            else:
                flat[f"{prefix}{key}"] = value
    return flat


def phase_names(run: Any) -> list[tuple[str, float]]:
    """The run's phase table (`Run.phases`) as metric names: "decode_and_cache", "epoch_1" …"""
    return [
        (re.sub(r"[^a-z0-9]+", "_", name.split(" (")[0].lower()).strip("_"), float(seconds))
        for name, seconds in getattr(run, "phases", [])
    ]
