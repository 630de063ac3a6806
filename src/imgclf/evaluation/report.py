"""`imgclf report RUN_DIR`: one self-contained report.html (images embedded, nothing external).

Sections: headline numbers, dataset (class counts, image sizes, samples per class), the resolved
configuration, training curves and history, and the validation evaluation (per-class table,
confusion matrices, most-confused pairs, reliability, misclassified gallery).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf import runs
from imgclf.errors import UsageError
from imgclf.evaluation import outputs
from imgclf.evaluation.plots import class_counts_figure, size_histogram_figure
from imgclf.io import write_text_atomic

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:24px 32px}header h1{margin:0 0 4px;font-size:24px}
header .sub{opacity:.75;font-size:14px}main{padding:16px 32px 48px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:16px 24px;margin:16px 0;box-shadow:0 1px 3px #0002}
h2{font-size:19px;margin:4px 0 12px}h3{font-size:15px;margin:16px 0 8px}
.cards{display:flex;gap:16px;flex-wrap:wrap}
.card{background:#eef3fb;border-radius:8px;padding:12px 18px;min-width:150px}
.card .value{font-size:28px;font-weight:600}.card .label{font-size:13px;color:#556}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e3e6ea;text-align:right}
img.samples{max-width:640px}
th:first-child,td:first-child{text-align:left}img{max-width:100%;height:auto;border:1px solid #e3e6ea}
pre{background:#f3f4f6;padding:12px;overflow:auto;font-size:12px;max-height:420px}
.row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}.row>div{flex:1 1 360px}
.muted{color:#667;font-size:13px}
"""


def _image(path: Path, alt: str, css_class: str = "") -> str:
    if not path.is_file():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    attribute = f' class="{css_class}"' if css_class else ""
    return f'<img{attribute} src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure(figure: Any, alt: str) -> str:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _download(path: Path, label: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<a download="{html.escape(path.name)}" href="data:text/csv;base64,{data}">{html.escape(label)}</a>'
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build report.html for a run folder and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise UsageError(f"{run_dir} is not a run folder (no {runs.CONFIG_FILE})")
    info = _read_json(run_dir / runs.MODEL_DIR / "imgclf.json")
    dataset = _read_json(run_dir / runs.DATASET_FILE)
    evaluation = _read_json(run_dir / runs.EVALUATION_DIR / outputs.METRICS_FILE)
    skipped = _read_csv(run_dir / runs.PROBLEMS_FILE)
    config_text = (run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8")
    parts = [
        summary_section(info, evaluation),
        dataset_section(run_dir, dataset, len(skipped)) if dataset else "",
        f"<section><h2>Configuration</h2><pre>{html.escape(config_text)}</pre></section>",
        training_section(run_dir, info),
        (multi_label_section if evaluation.get("task") == "multi-label" else evaluation_section)(
            run_dir, evaluation
        )
        if evaluation
        else "",
        skipped_section(skipped) if skipped else "",
    ]
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>imgclf report — {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>imgclf report: {html.escape(run_dir.name)}</h1>"
        f'<div class="sub">{html.escape(str(run_dir.resolve()))} · {created}</div></header>'
        f"<main>{''.join(parts)}</main></body></html>"
    )
    target = Path(out) if out is not None else run_dir / runs.REPORT_FILE
    write_text_atomic(target, document)
    return target


def summary_section(info: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """The headline numbers as cards, and the model in one line."""
    metrics = info.get("metrics", {})
    training = info.get("training", {})
    if info.get("task") == "multi-label":
        cards = [
            ("validation mAP", metrics.get("val_map")),
            ("test mAP", metrics.get("test_map")),
            ("validation macro F1", metrics.get("val_macro_f1")),
            ("test macro F1", metrics.get("test_macro_f1")),
            ("best epoch", training.get("best_epoch")),
        ]
        return _summary_cards(cards, info, "labels")
    cards = [
        ("validation accuracy", evaluation.get("accuracy", metrics.get("val_acc"))),
        ("test accuracy", metrics.get("test_acc")),
        ("macro F1", evaluation.get("macro", {}).get("f1")),
        ("best epoch", training.get("best_epoch")),
        ("ECE", evaluation.get("ece")),
    ]
    return _summary_cards(cards, info, "classes")


def _summary_cards(cards: list[tuple[str, Any]], info: dict[str, Any], kind: str) -> str:
    card_html = "".join(
        f'<div class="card"><div class="value" id="{label.replace(" ", "-")}">{_fmt(value)}</div>'
        f'<div class="label">{html.escape(label)}</div></div>'
        for label, value in cards
        if value is not None
    )
    return (
        f'<section><h2>Summary</h2><div class="cards">{card_html}</div>'
        f'<p class="muted">model {html.escape(str(info.get("architecture", {}).get("name", "?")))}, '
        f"{len(info.get('classes', []))} {kind}, "
        f"input {_spec_text(info.get('preprocessing', {}))}</p></section>"
    )


def dataset_section(run_dir: Path, dataset: dict[str, Any], skipped: int) -> str:
    """Images per class and split, image sizes and modes, samples per class."""
    counts = dataset.get("counts", {})
    rows = [
        [name] + [counts.get(s, {}).get(name, 0) for s in ("train", "val", "test")]
        for name in dataset.get("classes", [])
    ]
    widths, heights = [], []
    for key, number in dataset.get("sizes", {}).items():
        width, height = (int(v) for v in key.split("x"))
        widths += [width] * number
        heights += [height] * number
    modes = ", ".join(f"{mode} {count:,}" for mode, count in dataset.get("modes", {}).items())
    return (
        "<section><h2>Dataset</h2>"
        f'<p class="muted">{html.escape(str(dataset.get("source", "")))} '
        f"({html.escape(dataset.get('layout', ''))}); "
        f"modes: {html.escape(modes)}; skipped files: {skipped}</p>"
        '<div class="row"><div>'
        + _figure(class_counts_figure(counts), "images per class")
        + "</div><div>"
        + (_figure(size_histogram_figure(widths, heights), "image sizes") if widths else "")
        + "</div></div>"
        + _table(["class", "train", "val", "test"], rows)
        + "<h3>Samples per class</h3>"
        + _image(run_dir / runs.SAMPLES_FILE, "samples per class", "samples")
        + "</section>"
    )


def training_section(run_dir: Path, info: dict[str, Any]) -> str:
    """The curves and the per-epoch table; why training stopped."""
    training = info.get("training", {})
    columns = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
    history_rows = [
        [int(r["epoch"]), *(float(r[column]) for column in columns)]
        for r in _read_csv(run_dir / runs.METRICS_FILE)
    ]
    return (
        "<section><h2>Training</h2>"
        + _image(run_dir / runs.CURVES_FILE, "training curves")
        + _table(["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"], history_rows)
        + (f"<p>{html.escape(training['stop_reason'])}</p>" if training.get("stop_reason") else "")
        + "</section>"
    )


def evaluation_section(run_dir: Path, evaluation: dict[str, Any]) -> str:
    """The validation evaluation: per-class table, confusion matrices, calibration, worst mistakes."""
    evaluation_dir = run_dir / runs.EVALUATION_DIR
    per_class = [
        [name, row["precision"], row["recall"], row["f1"], row["support"]]
        for name, row in evaluation.get("per_class", {}).items()
    ]
    for label, key in (("macro avg", "macro"), ("weighted avg", "weighted")):
        row = evaluation.get(key, {})
        per_class.append([label, row.get("precision"), row.get("recall"), row.get("f1"), evaluation["count"]])
    confused = [list(row) for row in evaluation.get("most_confused", [])[:15]]
    top_k = ", ".join(f"top-{k} {v:.4f}" for k, v in evaluation.get("top_k_accuracy", {}).items())
    return (
        f"<section><h2>Evaluation ({html.escape(str(evaluation.get('split', 'val')))} split, "
        f"{evaluation.get('count', 0):,} images)</h2>"
        f"<p>accuracy {_fmt(evaluation.get('accuracy'))}; {top_k}; loss {_fmt(evaluation.get('loss'))}; "
        f"ECE {_fmt(evaluation.get('ece'))}. "
        f"{_download(evaluation_dir / outputs.PREDICTIONS_FILE, 'predictions.csv')}</p>"
        + _table(["class", "precision", "recall", "f1", "support"], per_class)
        + '<div class="row"><div><h3>Confusion matrix</h3>'
        + _image(evaluation_dir / outputs.CONFUSION_FILE, "confusion matrix")
        + "</div><div><h3>Normalized</h3>"
        + _image(evaluation_dir / outputs.CONFUSION_NORMALIZED_FILE, "normalized confusion matrix")
        + "</div></div><h3>Most confused</h3>"
        + _table(["true", "predicted", "count"], confused)
        + '<div class="row"><div><h3>Reliability</h3>'
        + _image(evaluation_dir / outputs.RELIABILITY_FILE, "reliability diagram")
        + "</div><div><h3>Coverage and precision</h3>"
        + unknown_paragraph(evaluation)
        + _image(evaluation_dir / outputs.COVERAGE_FILE, "coverage-precision curve")
        + "</div></div><h3>Highest-loss mistakes</h3>"
        + _image(evaluation_dir / outputs.MISCLASSIFIED_FILE, "misclassified images")
        + "</section>"
    )


def multi_label_section(run_dir: Path, evaluation: dict[str, Any]) -> str:
    """A multi-label model's validation evaluation: the per-label table at the thresholds chosen,
    the headline numbers, co-occurrence and missed-together matrices, the images with wrong labels."""
    from imgclf.evaluation import multi_label

    evaluation_dir = run_dir / runs.EVALUATION_DIR
    per_label = [
        [name, row["precision"], row["recall"], row["f1"], row["ap"] if row["ap"] is not None else math.nan,
         row["threshold"], row["support"]]
        for name, row in evaluation.get("per_label", {}).items()
    ]  # fmt: skip
    return (
        f"<section><h2>Evaluation ({html.escape(str(evaluation.get('split', 'val')))} split, "
        f"{evaluation.get('count', 0):,} images, multi-label)</h2>"
        f"<p>mAP {_fmt(evaluation.get('map'))}; macro F1 {_fmt(evaluation.get('macro_f1'))}; micro F1 "
        f"{_fmt(evaluation.get('micro_f1'))}; subset accuracy {_fmt(evaluation.get('subset_accuracy'))}; "
        f"Hamming loss {_fmt(evaluation.get('hamming_loss'))}; labels per image "
        f"{_fmt(evaluation.get('labels_per_image'), 2)} "
        f"(answered {_fmt(evaluation.get('answered_per_image'), 2)}). "
        f"{_download(evaluation_dir / outputs.PREDICTIONS_FILE, 'predictions.csv')}</p>"
        + _table(["label", "precision", "recall", "f1", "AP", "threshold", "support"], per_label)
        + '<div class="row"><div><h3>Label co-occurrence</h3>'
        + _image(evaluation_dir / multi_label.COOCCURRENCE_FILE, "label co-occurrence")
        + "</div><div><h3>Missed together</h3>"
        + _image(evaluation_dir / multi_label.MISSED_TOGETHER_FILE, "labels missed together")
        + "</div></div><h3>Images with missed or extra labels</h3>"
        + _image(evaluation_dir / multi_label.MISTAKES_FILE, "images with wrong labels")
        + "</section>"
    )


def unknown_paragraph(evaluation: dict[str, Any]) -> str:
    """Where the model's `unknown` rule stands on this split, or how to get one."""
    unknown = evaluation.get("unknown")
    if not unknown:
        return (
            '<p class="muted">The model always answers a class. Train (or <code>imgclf calibrate</code>) '
            "with <code>--min-precision P</code> to answer <em>unknown</em> below the confidence that "
            "keeps precision ≥ P.</p>"
        )
    return (
        f"<p>unknown when {html.escape(unknown['rule'])}: coverage {unknown['coverage']:.1%} "
        f"({unknown['answered']:,} answered, {unknown['unknown']:,} unknown, of which "
        f"{unknown['unlike_training_images']:,} unlike the training images), precision "
        f"{_fmt(unknown['precision'])}.</p>"
    )


def skipped_section(skipped: list[dict[str, str]]) -> str:
    """The files left out, the first 200 of them."""
    return (
        "<section><h2>Skipped files</h2>"
        + _table(["path", "kind", "reason"], [[r["path"], r["kind"], r["reason"]] for r in skipped[:200]])
        + (f'<p class="muted">… {len(skipped) - 200} more</p>' if len(skipped) > 200 else "")
        + "</section>"
    )


def _spec_text(spec: dict[str, Any]) -> str:
    if not spec:
        return "?"
    return f"{spec.get('height')}×{spec.get('width')}×{spec.get('channels')} ({spec.get('resize')})"
