"""Terminal output for the CLI (and for notebooks with `verbose=True`): progress bars and summaries.

Library code never prints; this reporter listens to training events and draws them with rich.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from imgclf.training.events import Callback, TrainState
from imgclf.training.phases import count_start_up

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def format_count(value: int) -> str:
    return f"{value:,}"


def problems_line(problems: list[Any], where: str | None = None, show: int = 5) -> str | None:
    """'skipped 3 files (2 non-image, 1 corrupt: a.jpg) — see …' or None when nothing was skipped."""
    if not problems:
        return None
    kinds: dict[str, int] = {}
    for problem in problems:
        kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    bad = [p.path for p in problems if p.kind != "non-image"]
    named = ""
    if bad:
        named = ": " + ", ".join(bad[:show]) + (f" and {len(bad) - show} more" if len(bad) > show else "")
    tail = f" — listed in {where}" if where else ""
    return f"skipped {len(problems)} files ({parts}){named}{tail}"


class ConsoleReporter(Callback):
    """Model summary, one progress bar per epoch (loss, accuracy, images/s, ETA), a line per epoch."""

    def __init__(self, out: Console | None = None) -> None:
        self.console = out or console
        self.progress: Progress | None = None
        self.task: Any = None
        self.decode_progress: Progress | None = None
        self.decode_task: Any = None

    # -- before training ------------------------------------------------------------------------
    def on_progress(self, stage: str, done: int, total: int) -> None:
        if not self.console.is_terminal:  # logs and pipes get the per-epoch lines only
            return
        if self.decode_progress is None:
            label = {"decode": "decoding images once", "features": "computing features"}.get(stage, stage)
            self.decode_progress = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.decode_progress.start()
            self.decode_task = self.decode_progress.add_task(stage, total=total)
        self.decode_progress.update(self.decode_task, completed=done)
        if done >= total:
            self.decode_progress.stop()
            self.decode_progress = None

    def on_train_start(self, state: TrainState) -> None:
        info = state.info
        counts, spec = info.counts, info.spec
        print_ = self.console.print
        print_(f"[bold]run folder[/bold] {info.run_dir}")
        if info.layout:
            print_(f"[bold]layout[/bold] {info.layout}")
        classes = info.classes
        shown = ", ".join(classes[:12]) + (f" … ({len(classes)} in all)" if len(classes) > 12 else "")
        print_(f"[bold]classes[/bold] {len(classes)}: {shown}")
        print_(
            "[bold]images[/bold] "
            + ", ".join(f"{split} {format_count(counts.get(split, 0))}" for split in ("train", "val", "test"))
            + (
                f"  (validating on {info.validation_split})"
                if info.validation_split not in (None, "val")
                else ""
            )
        )
        line = problems_line(info.problems, "skipped_files.csv")
        if line:
            self.console.print(f"[yellow]{line}[/yellow]")
        if spec is not None:
            print_(
                f"[bold]preprocessing[/bold] {spec.height}×{spec.width}, {spec.channels} channel(s), "
                f"resize {spec.resize}, mean {_short(spec.mean)} std {_short(spec.std)}"
            )
        print_(f"[bold]device[/bold] {info.device}, images cached: {info.cache}")
        if info.summary is not None:
            print_(info.summary.to_text(), markup=False)
        if info.resumed_from is not None:
            print_(f"resuming after epoch {info.resumed_from}")

    # -- per epoch ------------------------------------------------------------------------------
    def on_epoch_start(self, state: TrainState) -> None:
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn(f"epoch {state.epoch + 1}/{state.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=None, stats="")

    def on_batch_end(self, state: TrainState) -> None:
        if self.progress is None:
            return
        running = state.running
        stats = f"loss {running['loss']:.4f} acc {running['acc']:.4f} {running['images_per_s']:,.0f} img/s"
        self.progress.update(self.task, completed=state.batch, total=state.batches, stats=stats)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        row = state.last
        text = f"epoch {state.epoch}/{state.epochs}  "
        if row.get("stage") == "head":
            text += "head on cached features: "
        text += f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        if math.isfinite(row.get("val_loss", float("nan"))):
            text += f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
            if "val_map" in row:  # multi-label: acc is subset accuracy at 0.5
                text += f" mAP {row['val_map']:.4f}"
        if row.get("stage") == "head":
            text += f" | {row['seconds']:.1f} s"
        else:
            text += f" | lr {row['lr']:.2e} | {row['seconds']:.1f} s, {row['images_per_s']:,.0f} img/s"
        if state.improved:
            text += "  [green]best[/green]"
        self.console.print(text, soft_wrap=True)

    def on_train_end(self, state: TrainState) -> None:
        if state.stop_reason:
            self.console.print(state.stop_reason)

    def on_run_end(self, run: Any) -> None:
        table = Table(show_header=False, box=None, pad_edge=False)
        for key, value in run.metrics.items():
            if not key.endswith("_count"):
                table.add_row(key, f"{value:.4f}")
        self.console.print(f"[bold]best epoch[/bold] {run.best_epoch}")
        self.console.print(table)
        self.console.print(f"[bold]model[/bold] {run.artifact}")
        self.console.print(
            f"[bold]run folder[/bold] {run.run_dir} (config.yaml, manifest.csv, metrics.csv, "
            "curves.png, last.pt)"
        )


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def print_evaluation(metrics: dict[str, Any], out: Console | None = None, pairs: int = 10) -> None:
    """The classification report as a table, the headline numbers, then the most-confused pairs."""
    out = out or console
    if metrics.get("task") == "multi-label":
        print_multi_label_evaluation(metrics, out, pairs)
        return
    table = Table(title=f"{metrics['count']:,} images ({metrics.get('split', 'all')})")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(
            name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", f"{row['support']:,}"
        )
    for label, key in (("macro avg", "macro"), ("weighted avg", "weighted")):
        row = metrics[key]
        table.add_row(
            label,
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            f"{metrics['count']:,}",
            style="bold",
        )
    out.print(table)
    top_k = "  ".join(f"top-{k} {value:.4f}" for k, value in metrics.get("top_k_accuracy", {}).items())
    out.print(
        f"accuracy {metrics['accuracy']:.4f}  {top_k}  loss {metrics['loss']:.4f}  ECE {metrics['ece']:.4f}"
    )
    unknown = metrics.get("unknown")
    if unknown:
        out.print(
            f"unknown when {unknown['rule']}: coverage {unknown['coverage']:.4f} ({unknown['answered']:,} "
            f"answered, {unknown['unknown']:,} unknown), precision {unknown['precision']:.4f}",
            markup=False,
            soft_wrap=True,
        )
    confused = metrics.get("most_confused", [])[:pairs]
    if confused:
        out.print("most confused (true → predicted: count)")
        for true, predicted, count in confused:
            out.print(f"  {true} → {predicted}: {count}", markup=False)


def print_multi_label_evaluation(metrics: dict[str, Any], out: Console, pairs: int = 10) -> None:
    """Per label: precision, recall, F1, AP at its threshold; then mAP, F1, subset accuracy, Hamming
    loss; then the labels missed together most often."""
    table = Table(title=f"{metrics['count']:,} images ({metrics.get('split', 'all')}), multi-label")
    for column in ("label", "precision", "recall", "f1", "ap", "threshold", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, row in metrics["per_label"].items():
        ap = row["ap"]
        table.add_row(
            name,
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            f"{ap:.4f}" if ap is not None and math.isfinite(ap) else "-",
            f"{row['threshold']:.3f}",
            f"{row['support']:,}",
        )
    out.print(table)
    out.print(
        f"mAP {metrics['map']:.4f}  macro F1 {metrics['macro_f1']:.4f}  micro F1 {metrics['micro_f1']:.4f}  "
        f"subset accuracy {metrics['subset_accuracy']:.4f}  Hamming loss {metrics['hamming_loss']:.4f}  "
        f"labels per image {metrics['labels_per_image']:.2f} (answered {metrics['answered_per_image']:.2f})"
    )
    names = list(metrics["per_label"])
    together = metrics.get("missed_together") or []
    found = [
        (together[i][j], names[i], names[j])
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if together[i][j] > 0
    ]
    if found:
        out.print("missed together most often (label + label: images)")
        for count, first, second in sorted(found, reverse=True)[:pairs]:
            out.print(f"  {first} + {second}: {count}", markup=False)


def print_audit(report: Any, out: Console | None = None) -> None:
    """Images per split and class, then one row per finding (level, kind, count, examples)."""
    from imgclf.data.audit import summarize_files

    out = out or console
    splits = Table(title=f"{report.source} ({report.description or report.layout})")
    kind = "labels" if report.label_summary else "classes"  # multi-label data: images per label
    splits.add_column("split")
    splits.add_column("images", justify="right")
    splits.add_column(kind, justify="right")
    splits.add_column(f"smallest / largest {kind[:-1]}", justify="right")
    for name, summary in report.splits.items():
        counts = list(summary[kind].values()) or [0]
        splits.add_row(
            name,
            f"{summary['images']:,}",
            str(sum(c > 0 for c in counts)),
            f"{min(counts):,} / {max(counts):,}",
        )
    out.print(splits)
    sizes = ", ".join(f"{size} ×{count:,}" for size, count in list(report.sizes.items())[:5])
    out.print(f"sizes: {sizes}{' …' if len(report.sizes) > 5 else ''}")
    out.print("modes: " + ", ".join(f"{mode} ×{count:,}" for mode, count in report.modes.items()))
    if report.label_summary:
        out.print(report.label_summary, markup=False)
    if not report.findings:
        out.print("[green]no problems found[/green]")
    else:
        findings = Table()
        for column in ("level", "finding", "count", "examples"):
            findings.add_column(column, overflow="fold")
        colours = {"error": "red", "warning": "yellow", "info": "cyan"}
        for finding in report.findings:
            findings.add_row(
                f"[{colours[finding.level]}]{finding.level}[/]",
                f"{finding.kind}: {finding.message}",
                f"{len(finding.files):,}",
                summarize_files(finding.files),
            )
        out.print(findings)
    errors = sum(f.level == "error" for f in report.findings)
    warnings = sum(f.level == "warning" for f in report.findings)
    out.print(
        f"{report.files_read:,} files checked in {report.seconds:.1f} s: {errors} errors, {warnings} warnings"
    )


def started_from_command_line() -> None:
    """The command line's process exists for its one command: a run's phase table counts the
    process's start-up (the interpreter, imports, option parsing) as its first phase."""
    count_start_up()
