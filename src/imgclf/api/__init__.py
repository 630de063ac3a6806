"""What the CLI and notebooks call: one entry point per task, each resolving its arguments and
handing over to the layer that does the work.

- `train`, `update` (`imgclf.api.training`) → `imgclf.training.trainer.run_training`,
  `imgclf.training.update.update_run`
- `evaluate`, `calibrate`, `report` (`imgclf.api.evaluation`) → `imgclf.evaluation`
- `open_review`, `serve_review`, `apply_review`, `revert_review` (`imgclf.api.review`) →
  `imgclf.review`, `imgclf.data.decisions`
- `check`, `show`, `features`, `cache_entries`, `clear_cache` (`imgclf.api.data`) → `imgclf.data`,
  `imgclf.features`
- `load_model`, `predict`, `explain`, `serve`, `list_models` (`imgclf.api.models`) →
  `imgclf.inference`, `imgclf.serve`, `imgclf.models`
- `export_model` (`imgclf.export.exporter`), `show` (`imgclf.evaluation.show`), `audit`,
  `write_report`, `Predictor`, `Run`: the layer's own function or class, handed over on first use
  with its own signature (no pass-through repeats it)

The training and evaluation layers are imported when called, so that loading a model to predict
imports neither.
"""

from __future__ import annotations

from typing import Any

from imgclf.api.data import CheckResult, cache_entries, check, clear_cache, features, select_data
from imgclf.api.evaluation import calibrate, evaluate, report
from imgclf.api.models import explain, list_models, load_model, predict, serve
from imgclf.api.review import apply_review, open_review, revert_review, serve_review
from imgclf.api.training import launch, train, update
from imgclf.config import Config, resolve_config

__all__ = [
    "CheckResult",
    "Config",
    "Predictor",
    "Run",
    "apply_review",
    "audit",
    "cache_entries",
    "calibrate",
    "check",
    "clear_cache",
    "evaluate",
    "explain",
    "export_model",
    "export_onnx",
    "features",
    "launch",
    "list_models",
    "load_model",
    "open_review",
    "predict",
    "report",
    "resolve_config",
    "revert_review",
    "select_data",
    "serve",
    "serve_review",
    "show",
    "train",
    "update",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # the classes and older names the public surface also offers, imported on first use
    if name == "Run":  # the outcome of `train`, defined with the Trainer that makes it
        from imgclf.training.trainer import Run

        return Run
    if name == "Predictor":
        from imgclf.inference.predictor import Predictor

        return Predictor
    if name == "audit":  # every check of `check`, as the report object
        from imgclf.data.audit import audit

        return audit
    if name == "write_report":
        from imgclf.evaluation.report import write_report

        return write_report
    if name in ("export_model", "export_onnx"):  # export_onnx: its old name (it writes ORT and TFLite too)
        from imgclf.export.exporter import export_model

        return export_model
    if name == "show":  # a grid of sample images per class
        from imgclf.evaluation.show import show

        return show
    raise AttributeError(f"module 'imgclf.api' has no attribute {name!r}")
