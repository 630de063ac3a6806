"""What the CLI and notebooks call: one entry point per task, each resolving its arguments and
handing over to the layer that does the work.

- `train`, `update` (`imgclf.api.training`) → `imgclf.training.trainer.run_training`,
  `imgclf.training.update.update_run`
- `evaluate`, `calibrate`, `report` (`imgclf.api.evaluation`) → `imgclf.evaluation`
- `open_review`, `serve_review`, `apply_review`, `revert_review` (`imgclf.api.review`) →
  `imgclf.review`, `imgclf.data.decisions`
- `check`, `show`, `features`, `cache_entries`, `clear_cache` (`imgclf.api.data`) → `imgclf.data`,
  `imgclf.features`
- `load_model`, `predict`, `explain`, `export_model`, `serve`, `list_models` (`imgclf.api.models`)
  → `imgclf.inference`, `imgclf.export`, `imgclf.serve`, `imgclf.models`

The training and evaluation layers are imported when called, so that loading a model to predict
imports neither.
"""

from __future__ import annotations

from typing import Any

from imgclf.api.data import CheckResult, cache_entries, check, clear_cache, features, select_data, show
from imgclf.api.evaluation import calibrate, evaluate, report
from imgclf.api.models import explain, export_model, list_models, load_model, predict, serve
from imgclf.api.review import apply_review, open_review, revert_review, serve_review
from imgclf.api.training import launch, train, update

__all__ = [
    "CheckResult",
    "apply_review",
    "cache_entries",
    "calibrate",
    "check",
    "clear_cache",
    "evaluate",
    "explain",
    "export_model",
    "features",
    "launch",
    "list_models",
    "load_model",
    "open_review",
    "predict",
    "report",
    "revert_review",
    "select_data",
    "serve",
    "serve_review",
    "show",
    "train",
    "update",
]


def __getattr__(name: str) -> Any:
    if name == "Run":  # the outcome of `train`, defined with the pipeline that makes it
        from imgclf.training.trainer import Run

        return Run
    raise AttributeError(f"module 'imgclf.api' has no attribute {name!r}")
