"""imgclf: from a folder of labelled images to a trained, evaluated image classifier.

The public API is `imgclf.api`, re-exported here (no side effects on import; torch loads only when
a function that needs it is called):
    train(data, **settings) → Run          update(run, review=…) → Run
    evaluate(model, data) → metrics        calibrate(model, data, min_precision=P) → calibration
    load_model(path) → Predictor           predict(model, inputs) → answers
    check(data) → CheckResult              audit(data) → AuditReport       show(data) → Figure
    features(model, data) → arrays         report(run) / write_report(run_dir) → report.html
    export_model(model) → ExportResult     serve(model) / review: open_review, apply_review, …
    (export_onnx is the old name of export_model and stays an alias)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgclf.version import __version__

# what `imgclf.api` offers, by name; `__getattr__` hands each over on first use
__all__ = [
    "CheckResult",
    "Config",
    "Predictor",
    "Run",
    "__version__",
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
    "list_models",
    "load_model",
    "open_review",
    "predict",
    "report",
    "resolve_config",
    "revert_review",
    "serve",
    "serve_review",
    "show",
    "train",
    "update",
    "write_report",
]

if TYPE_CHECKING:
    from imgclf.api import (
        CheckResult,
        Config,
        Predictor,
        Run,
        apply_review,
        audit,
        cache_entries,
        calibrate,
        check,
        clear_cache,
        evaluate,
        explain,
        export_model,
        export_onnx,
        features,
        list_models,
        load_model,
        open_review,
        predict,
        report,
        resolve_config,
        revert_review,
        serve,
        serve_review,
        show,
        train,
        update,
        write_report,
    )


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import imgclf` stays cheap (torch loads only when needed).
    if name in __all__:
        from imgclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
