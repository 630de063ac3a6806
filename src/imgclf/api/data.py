"""Entry points over a data source: `check` (the audit, and likely wrong labels), `show`,
`features`, and what the cache folder holds."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.config import DataConfig, resolve_data_config
from imgclf.data.prepared import select_data

if TYPE_CHECKING:
    from imgclf.data.audit import AuditReport
    from imgclf.data.cache import CacheEntry
    from imgclf.features.label_issues import LabelIssues
    from imgclf.training.events import Callback

logger = logging.getLogger(__name__)


@dataclass
class CheckResult:
    """What `check` found: the audit, and with `labels` the likely wrong labels and their files."""

    report: AuditReport
    label_issues: LabelIssues | None = None
    label_table: Path | None = None  # label_issues.csv (label_issues.png beside it)
    out: Path | None = None  # every finding as JSON, when asked for


def check(
    data: Any,
    *,
    imbalance: float = 10.0,
    min_class_size: int = 10,
    labels: bool = False,
    labels_model: str | Path | None = None,
    labels_out: str | Path = "label_issues",
    folds: int = 5,
    device: str = "auto",
    out: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    data_config: DataConfig | None = None,
    **data_options: Any,
) -> CheckResult:
    """Audit a data source before training (`imgclf.data.audit`); with `labels`, also find likely
    wrong labels (confident learning on out-of-sample probabilities of a head cross-fitted on a
    backbone's features), written as label_issues.csv and label_issues.png into `labels_out` and
    added to the findings. `out`: write every finding to this JSON file. `data_config` (or its
    fields as keywords: `path_col`, `label_col`, `images`, `multi_label`, `splits`, `workers`) says
    how the data is read."""
    from imgclf.data.audit import Finding, audit
    from imgclf.data.sources import as_image_set
    from imgclf.io import write_text_atomic

    cfg = resolve_data_config(data_config, data_options)
    workers = cfg.workers
    source = as_image_set(  # scanned once, for the audit and the label check
        data, path_col=cfg.path_col, label_col=cfg.label_col, images=cfg.images,
        multi_label=cfg.multi_label, splits=cfg.splits,
    )  # fmt: skip
    report = audit(source, workers=workers, imbalance_threshold=imbalance, min_class_size=min_class_size)
    result = CheckResult(report)
    if labels:
        from imgclf.data.headers import read_headers
        from imgclf.data.prepared import header_workers
        from imgclf.features.label_issues import find_label_issues, write_label_issues

        image_set = read_headers(source, workers=header_workers(len(source), workers))
        conflicting = {
            path
            for finding in report.findings
            if finding.kind == "conflicting-labels"
            for entry in finding.files
            for path in entry["paths"]
        }
        found = find_label_issues(
            image_set, labels_model, folds, device=device, always=sorted(conflicting), callbacks=callbacks
        )
        result.label_issues, result.label_table = found, write_label_issues(found, Path(labels_out))
        files = [
            {"path": i.path, "given": i.given, "suggested": i.suggested, "score": round(i.quality, 6)}
            | ({"missing": list(i.missing), "extra": list(i.extra)} if source.multi_label else {})
            for i in found.issues
        ]
        if files:
            message = "likely wrong labels (confident learning on out-of-sample probabilities)"
            if source.multi_label:
                message = "likely missing or extra labels (confident learning per label, out-of-sample)"
            report.findings.append(Finding("warning", "label-issue", message, files))
    if out is not None:
        result.out = Path(out)
        write_text_atomic(result.out, json.dumps(report.to_dict(), indent=2))
    return result


def features(
    model_or_backbone: str | Path,
    data: Any,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    split: str = "all",
    manifest: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    callbacks: Sequence[Callback] = (),
    data_config: DataConfig | None = None,
    **data_options: Any,
) -> Path:
    """Bottleneck features of every image: a saved model's penultimate layer, or a pretrained backbone's.

    Writes `features.npy` (N×D float32), `labels.npy` (N int64), `samples.csv` (path, label, split)
    and `classes.json` into `out`. `data_config` (or its fields as keywords) says how the data is read.
    """
    from imgclf.data.prepared import prepare_data
    from imgclf.device import resolve_device
    from imgclf.features.bottleneck import feature_network, write_features

    cfg = resolve_data_config(data_config, data_options)
    image_set, split_names = select_data(data, cfg, split, manifest)
    resolved = resolve_device(device)
    model, spec = feature_network(model_or_backbone, weights, cfg, image_set, resolved)
    prepared = prepare_data(image_set, split_names, spec, "auto", None, callbacks)
    return write_features(model, prepared, Path(out), resolved, batch_size, callbacks)


def cache_entries(kinds: Sequence[str] | None = None) -> list[CacheEntry]:
    """What the cache folder holds (all kinds, or those named), a row per entry."""
    from imgclf.data.cache import list_cache

    _check_kinds(kinds)
    return [entry for entry in list_cache() if not kinds or entry.kind in kinds]


def clear_cache(kinds: Sequence[str] | None = None) -> int:
    """Delete the cache's entries (all kinds, or those named); returns the bytes freed."""
    from imgclf.data.cache import clear_cache as clear

    _check_kinds(kinds)
    return clear(list(kinds) if kinds else None)


def _check_kinds(kinds: Sequence[str] | None) -> None:
    from imgclf.data.cache import CACHE_KINDS
    from imgclf.errors import UsageError

    unknown = sorted(set(kinds or []) - set(CACHE_KINDS))
    if unknown:
        raise UsageError(f"--kind {unknown[0]!r}: use one of {', '.join(CACHE_KINDS)}")
