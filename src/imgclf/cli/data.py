"""Commands over a data source: `check` (the audit, and likely wrong labels), `show`, `features`,
`augment-preview`; and `cache`, what imgclf keeps of the data between runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import (
    BATCH_SIZE,
    DATA_SOURCE,
    DEVICE,
    WORKERS,
    DataArgument,
    Split,
    shared,
    shared_values,
    with_aliases,
    with_settings,
)


@command("check", rank=100)
@handle_errors
@shared(DATA_SOURCE, WORKERS)
def check(
    data: DataArgument,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any error-level finding exists.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write every finding to this JSON file.")
    ] = None,
    imbalance: Annotated[
        float,
        typer.Option(
            help="Warn when the largest class has more than this many times the images of the smallest."
        ),
    ] = 10.0,
    min_class_size: Annotated[int, typer.Option(help="Warn about classes with fewer images.")] = 10,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="Also find likely wrong labels (multi-label sets: likely missing or extra labels): "
            "out-of-sample probabilities from a head cross-fitted on the offline backbone's "
            "features, ranked by confident learning; writes label_issues.csv and label_issues.png "
            "into --labels-out.",
        ),
    ] = False,
    labels_model: Annotated[
        Path | None,
        typer.Option(help="A saved model whose features --labels uses \\[default: efficientnet_lite0]."),
    ] = None,
    labels_out: Annotated[Path, typer.Option(help="Folder for the --labels outputs.")] = Path("label_issues"),
    folds: Annotated[int, typer.Option(help="Cross-fitting folds of --labels.")] = 5,
    *,
    settings: dict[str, Any],
) -> None:
    """Audit a dataset before training: corrupt files, duplicates and leakage between splits,
    near-duplicates, the same image under two classes, imbalance, tiny or EXIF-rotated images,
    unusual modes, missing files; with --labels, likely wrong labels."""
    from imgclf import api
    from imgclf.console import ConsoleReporter, console, print_audit

    result = api.check(
        data, imbalance=imbalance, min_class_size=min_class_size, labels=labels,
        labels_model=labels_model, labels_out=labels_out, folds=folds, out=out,
        callbacks=[ConsoleReporter()], **shared_values(settings, DATA_SOURCE, WORKERS),
    )  # fmt: skip
    print_audit(result.report)
    found = result.label_issues
    if found is not None:
        share = len(found.issues) / max(1, len(found.image_set))
        what = "likely missing or extra labels" if found.image_set.multi_label else "likely wrong labels"
        measure, value = found.agreement
        console.print(
            f"{what}: {len(found.issues):,} of {len(found.image_set):,} images ({share:.1%}), most likely "
            f"first; the check's out-of-sample {measure} on the given labels is {value:.3f} (the lower, the "
            "more of the list is right after all)"
        )
        for issue in found.issues[:10]:
            if found.image_set.multi_label:
                changes = [f"missing {name}" for name in issue.missing] + [f"extra {n}" for n in issue.extra]
                told = f"labelled {issue.given or '(none)'}: {', '.join(changes)}"
            else:
                told = f"labelled {issue.given}, looks {issue.suggested}"
            console.print(f"  {issue.path}  {told} ({issue.quality:.3f})", markup=False, soft_wrap=True)
        console.print(f"wrote {result.label_table} and {result.label_table.parent / 'label_issues.png'}")
    if result.out is not None:
        console.print(f"wrote {result.out}")
    if strict and result.report.has_errors:
        raise typer.Exit(1)


@command("show", rank=110)
@handle_errors
@shared(DATA_SOURCE)
def show(
    data: DataArgument,
    per_class: Annotated[int, typer.Option(help="Images per class (one row per class).")] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Which images are drawn.")] = 0,
    *,
    settings: dict[str, Any],
) -> None:
    """Write a grid of sample images per class (in Python, `imgclf.show(...)` returns the figure)."""
    from imgclf import api
    from imgclf.console import console

    api.show(data, per_class=per_class, out=out, seed=seed, **shared_values(settings, DATA_SOURCE))
    console.print(f"wrote {out}")


@command("features", rank=120)
@handle_errors
@shared(DATA_SOURCE, BATCH_SIZE, DEVICE, batch_size=64)
def features(
    model: Annotated[
        str,
        typer.Argument(
            help="A saved model folder, or a backbone name such as efficientnet_lite0 (pretrained weights).",
            show_default=False,
        ),
    ],
    data: DataArgument,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for features.npy, labels.npy, samples.csv, classes.json."),
    ] = Path("features"),
    weights: Annotated[Path | None, typer.Option(help="Weights file for a backbone name.")] = None,
    split: Annotated[Split, typer.Option(help="Which split of the data.")] = Split.all,
    manifest: Annotated[Path | None, typer.Option(help="manifest.csv whose split to use.")] = None,
    *,
    settings: dict[str, Any],
) -> None:
    """Bottleneck features (the tutorials' predict_generator → np.save), in batches with a progress bar."""
    import numpy as np

    from imgclf import api
    from imgclf.console import ConsoleReporter, console

    folder = api.features(
        model,
        data,
        out,
        weights=weights,
        split=split.value,
        manifest=manifest,
        callbacks=[ConsoleReporter()],
        **shared_values(settings, DATA_SOURCE, BATCH_SIZE, DEVICE),
    )
    shape = np.load(folder / "features.npy", mmap_mode="r").shape
    console.print(f"wrote {shape[0]:,} × {shape[1]:,} features to {folder}")


@command("augment-preview", rank=140)
@handle_errors
@with_aliases(rows="--images")  # its name before it was --rows
@with_settings(
    lambda item: (
        (item.key.startswith("augment.") and item.key not in ("augment.mixup", "augment.cutmix"))
        or item.key in ("data.image_size", "seed")
    )
)
def augment_preview(
    data: DataArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "augment_preview.png"
    ),
    rows: Annotated[int, typer.Option(help="How many source images (one row each).")] = 6,
    variants: Annotated[
        int, typer.Option(help="Augmented versions per image (columns after the original).")
    ] = 7,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
    *,
    settings: dict[str, Any],
) -> None:
    """Write a PNG grid: each row one image, first the original, then augmented versions.

    The augmentation flags are `train`'s (MixUp and CutMix mix whole batches and are not shown)."""
    from imgclf.config import resolve_config
    from imgclf.preview import write_augment_preview

    cfg = resolve_config(config, settings)
    path = write_augment_preview(data, out, cfg, images=rows, variants=variants)
    from imgclf.console import console

    console.print(f"wrote {path}")


@command("cache", rank=50)
@handle_errors
def cache_command(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete the cache's entries (all kinds, or those of --kind).")
    ] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="decoded | headers | archives | features (repeatable) \\[default: all].", show_default=False
        ),
    ] = None,
) -> None:
    """What imgclf keeps in its cache folder ($IMGCLF_CACHE_DIR or ~/.cache/imgclf), and its size.

    Everything there can be deleted at any time: it is rebuilt when needed.
    """
    import datetime

    from imgclf import api
    from imgclf.console import console
    from imgclf.paths import cache_dir

    if clear:
        freed = api.clear_cache(kind)
        console.print(f"freed {freed / 2**20:,.1f} MiB in {cache_dir()}", markup=False, soft_wrap=True)
        return
    entries = api.cache_entries(kind)
    console.print(f"cache folder {cache_dir()}", markup=False, soft_wrap=True)
    for entry in entries:
        used = datetime.datetime.fromtimestamp(entry.last_used).strftime("%Y-%m-%d %H:%M")
        console.print(
            f"  {entry.kind:<9} {entry.name[:20]:<21} {entry.bytes / 2**20:>9,.1f} MiB  used {used}  "
            f"{entry.detail}",
            markup=False,
            soft_wrap=True,
        )
    total = sum(e.bytes for e in entries)
    console.print(
        f"{len(entries)} entries, {total / 2**20:,.1f} MiB (imgclf cache --clear frees it)", markup=False
    )
