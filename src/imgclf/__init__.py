"""imgclf: from a folder of labelled images to a trained, evaluated image classifier.

Public API (no side effects on import):
    train(data, **settings) → Run         evaluate(model, data) → metrics
    calibrate(model, min_precision=P) → imgclf.json's calibration (temperature, `unknown` rule)
    load_model(path) → Predictor           Predictor.from_path(path).predict(inputs)
    audit(data) → AuditReport              show(data) → matplotlib Figure
    write_report(run_dir) → report.html     export_model(model) → ExportResult (model.onnx, checked)
    (export_onnx is the old name of export_model and stays an alias)
    imgclf.serve.create_app(predictor) → FastAPI app
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgclf.version import __version__

__all__ = [
    "Config",
    "Predictor",
    "Run",
    "__version__",
    "audit",
    "calibrate",
    "evaluate",
    "export_model",
    "export_onnx",
    "features",
    "load_model",
    "resolve_config",
    "show",
    "train",
    "write_report",
]

if TYPE_CHECKING:
    from imgclf.api import calibrate, evaluate, features, load_model, train
    from imgclf.config import Config, resolve_config
    from imgclf.data.audit import audit
    from imgclf.evaluation.report import write_report
    from imgclf.evaluation.show import show
    from imgclf.export.exporter import export_model
    from imgclf.export.exporter import export_model as export_onnx
    from imgclf.inference.predictor import Predictor
    from imgclf.training.trainer import Run


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import imgclf` stays cheap (torch loads only when needed).
    if name in ("train", "evaluate", "calibrate", "features", "load_model"):
        from imgclf import api

        return getattr(api, name)
    if name == "Run":
        from imgclf.training.trainer import Run

        return Run
    if name in ("Config", "resolve_config"):
        from imgclf import config

        return getattr(config, name)
    if name == "audit":
        from imgclf.data.audit import audit

        return audit
    if name == "show":
        from imgclf.evaluation.show import show

        return show
    if name == "write_report":
        from imgclf.evaluation.report import write_report

        return write_report
    if name in ("export_model", "export_onnx"):  # export_onnx: its old name (it writes ORT and TFLite too)
        from imgclf.export.exporter import export_model

        return export_model
    if name == "Predictor":
        from imgclf.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
