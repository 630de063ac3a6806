"""`train`: a run from data and settings, or the rest of an interrupted one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf import runs
from imgclf.config import Config, load_config, resolve_config, setting_section
from imgclf.errors import UsageError

if TYPE_CHECKING:
    from imgclf.training.events import Callback
    from imgclf.training.trainer import Run


def train(
    data: Any = None,
    *,
    config: Config | str | Path | None = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    verbose: bool = False,
    **overrides: Any,
) -> Run:
    """Train a classifier and return the run (history, best metrics, artifact path).

    Args:
        data: a folder, CSV/TSV, archive or IDX path; a pandas DataFrame (path and label columns);
            or an image array (N, H, W[, C]) together with `labels`.
        config: a Config, or a YAML file; keyword overrides win over it (e.g. `epochs=5`,
            `model="cnn-small"`, `train={"lr": 3e-4}` or `"train.lr": 3e-4`).
        resume: a run folder to continue where it stopped (its config and split are reused).
        callbacks: extra event handlers (see `imgclf.training.events.Callback`).
        verbose: print progress to the terminal, as the CLI does (useful in notebooks).
    """
    from imgclf.training.trainer import run_training

    run_dir = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / runs.CONFIG_FILE).is_file():
            raise UsageError(f"{run_dir} is not a run folder to resume (no {runs.CONFIG_FILE})")
        saved = load_config(run_dir / runs.CONFIG_FILE)
        changed: dict[str, Any] = {}
        if saved.train.recipe == "auto":  # a run folder from before recipes trained as configured
            changed["train.recipe"] = "plain"
        if "epochs" in overrides or "train.epochs" in overrides:  # more epochs than first asked for
            changed["train.epochs"] = int(overrides.get("epochs", overrides.get("train.epochs")))
            if saved.train.freeze_epochs:  # the staged recipe: the second stage takes the epochs added
                changed["train.finetune_epochs"] = max(0, changed["train.epochs"] - saved.train.freeze_epochs)
        cfg = resolve_config(None, changed, base=saved) if changed else saved
    else:
        cfg = _config_from(config, data, overrides)
        if cfg.data.source is None and (data is None or isinstance(data, (str, Path))):
            raise UsageError("give the DATA to train on (or a --config that names data.source)")
    if verbose:
        from imgclf.console import ConsoleReporter

        callbacks = [*callbacks, ConsoleReporter()]
    return run_training(
        cfg, data, labels=labels, class_names=class_names, resume=run_dir, callbacks=callbacks
    )


def update(
    run: str | Path,
    review: str | Path | None = None,
    data: Any = None,
    *,
    full: bool = False,
    name: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> Any:
    """A new run from a trained one with a review's corrections (`review`: review.jsonl) and, with
    `data`, other data (new images, a new class): the head refitted on the run's own backbone in
    seconds (an `imgclf.training.update.Update`), or with `full` a whole new training run with the
    run's settings and the decisions as an overlay (a `Run`)."""
    if not full:
        from imgclf.training.update import update_run

        return update_run(run, review, data, name=name)
    from imgclf.training.update import run_folder_of

    run_dir = run_folder_of(run)
    saved = load_config(run_dir / runs.CONFIG_FILE)
    changed: dict[str, Any] = {
        "output.name": name or f"{run_dir.name}-update",
        "output.project": str(run_dir.parent),
    }
    if review is not None:
        changed["data.review"] = str(review)
    if data is not None:
        changed["data.source"] = str(data)
    cfg = resolve_config(None, changed, base=saved)
    return train(config=cfg, callbacks=callbacks)


def _config_from(config: Config | str | Path | None, data: Any, overrides: dict[str, Any]) -> Config:
    """Defaults < config (object or YAML) < keyword overrides.

    Keywords may be dotted ("train.lr"), a section dict (train={...}), or a bare setting name
    (lr=1e-3, epochs=5); `model="x"` is short for model.name, `augment="light"` for augment.preset.
    """
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "model" and isinstance(value, str):
            flat["model.name"] = value
        elif key == "augment" and isinstance(value, str):
            flat["augment.preset"] = value
        elif key == "name":  # the run's name; the model is chosen with model=
            flat["output.name"] = value
        elif "." in key or key in ("data", "augment", "model", "train", "output", "seed"):
            flat[key] = value
        else:
            flat[f"{setting_section(key)}.{key}"] = value
    if isinstance(data, (str, Path)):
        flat["data.source"] = str(data)
    if isinstance(config, Config):
        return resolve_config(None, flat, base=config)
    return resolve_config(config, flat)


def launch(devices: int, argv: list[str]) -> int:
    """Run `imgclf train` with `argv` in `devices` processes on this machine (torchrun +
    DistributedDataParallel); returns torchrun's exit code."""
    from imgclf.training.distributed import launch as run_processes

    return run_processes(devices, argv)
