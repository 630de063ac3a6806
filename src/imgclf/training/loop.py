"""The training loop, top to bottom: `fit` runs epochs of `train_one_epoch` and `evaluate`.

Data arrives as uint8 batches; each batch moves to the device, is augmented there (training only)
and normalized by the preprocessing spec, so the model sees exactly what prediction will give it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from imgclf.data.augment import BatchAugment, BatchMix
from imgclf.data.loader import Batch, MemoryLoader, StreamLoader
from imgclf.data.preprocess import PreprocessSpec, normalize_batch
from imgclf.errors import ConfigError
from imgclf.training.distributed import DistInfo, all_reduce_sum
from imgclf.training.events import Callback, TrainState, emit

Loader = MemoryLoader | StreamLoader


@dataclass
class StepContext:
    """How batches become model input on this hardware."""

    device: torch.device
    spec: PreprocessSpec
    augment: BatchAugment | None = None
    mix: BatchMix | None = None  # MixUp / CutMix of training batches
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    seed: int = 0
    normalize: bool = True  # False when batches are features, not images
    frozen_norm: list[nn.Module] = field(default_factory=list)  # kept in eval mode while training
    dist: DistInfo = field(default_factory=DistInfo)
    wrapped: nn.Module | None = None  # the DistributedDataParallel wrapper when distributed
    # a multi-label set: label-set index → 0/1 target vector (`ImageSet.set_targets`), on the device
    set_targets: torch.Tensor | None = None


def count_correct(logits: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Right answers in a batch: the top class; for a multi-label set, every label right at 0.5
    (subset accuracy; the thresholds are chosen after training)."""
    if ctx.set_targets is None:
        return (logits.argmax(1) == labels).sum()
    return ((logits > 0) == (ctx.set_targets[labels] > 0.5)).all(1).sum()


def autocast(ctx: StepContext):
    if ctx.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=ctx.autocast_dtype)


def wrap_for_ranks(model: nn.Module, ctx: StepContext) -> None:
    """Under torchrun, train through a DistributedDataParallel wrapper (gradients averaged over ranks)."""
    if not ctx.dist.enabled:
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ctx.wrapped = DistributedDataParallel(model, device_ids=device_ids)


def compile_for_training(model: nn.Module, ctx: StepContext, enabled: bool) -> None:
    """With --compile, training steps run through torch.compile (evaluation stays eager).

    The saved weights always come from `model` itself, so the artifact has no compiler traces.
    """
    if not enabled:
        return
    if ctx.device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        raise ConfigError("--compile on the CPU needs a C/C++ compiler (gcc); install it or drop --compile")
    ctx.wrapped = torch.compile(ctx.wrapped if ctx.wrapped is not None else model)


def prepare_batch(batch: Batch, ctx: StepContext, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 batch → normalized float input on the device (augmented when training)."""
    non_blocking = ctx.device.type == "cuda"
    images = batch.images.to(ctx.device, non_blocking=non_blocking)
    labels = batch.labels.to(ctx.device, non_blocking=non_blocking)
    if not ctx.normalize:
        return images.float(), labels
    images = ctx.augment(images) if train and ctx.augment is not None else images.float()
    inputs = normalize_batch(images, ctx.spec)
    if ctx.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, labels


def train_one_epoch(
    state: TrainState, loader: Loader, ctx: StepContext, loss_fn: nn.Module, callbacks: Sequence[Callback]
) -> dict[str, float]:
    model, optimizer = state.model, state.optimizer
    model.train()
    for module in ctx.frozen_norm:  # frozen BatchNorm keeps its statistics
        module.eval()
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    correct = torch.zeros((), device=ctx.device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    state.batch, state.batches = 0, len(loader)
    for batch in loader.epoch(state.epoch):
        inputs, labels = prepare_batch(batch, ctx, train=True)
        if ctx.mix is not None:
            inputs, others, lam = ctx.mix(inputs, labels)
        with autocast(ctx):
            logits = (ctx.wrapped if ctx.wrapped is not None else model)(inputs)
        loss = loss_fn(logits.float(), labels)
        if ctx.mix is not None:
            loss = lam * loss + (1.0 - lam) * loss_fn(logits.float(), others)
            labels = labels if lam >= 0.5 else others  # accuracy counts the label with the larger share
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.schedule.step_batch()
        loss_sum += loss.detach() * len(labels)
        correct += count_correct(logits.detach(), labels, ctx)
        seen += len(labels)
        state.batch += 1
        if callbacks and (state.batch % 10 == 0 or state.batch == state.batches or ctx.device.type == "cpu"):
            elapsed = time.perf_counter() - start
            state.running = {
                "loss": loss_sum.item() / seen,
                "acc": correct.item() / seen,
                "images_per_s": seen / max(elapsed, 1e-9),
                "seen": seen,
            }
            emit(callbacks, "on_batch_end", state)
    seconds = time.perf_counter() - start
    totals = all_reduce_sum(
        torch.stack(
            [loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=ctx.device)]
        ),
        ctx.dist,
    )
    loss_total, correct_total, seen_total = totals.tolist()
    seen_total = max(seen_total, 1.0)
    return {
        "train_loss": loss_total / seen_total,
        "train_acc": correct_total / seen_total,
        "train_seconds": seconds,
        "images_per_s": seen_total / max(seconds, 1e-9),
    }


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Loader, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every sample the loader yields, in its order."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader.epoch(0):
        inputs, labels = prepare_batch(batch, ctx, train=False)
        with autocast(ctx):
            logits = model(inputs).float()
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    if not all_logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(
    model: nn.Module,
    loader: Loader,
    ctx: StepContext,
    prefix: str = "val",
    answers: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy (unweighted, unsmoothed) and accuracy over the loader (summed over ranks,
    each sample counted once); for a multi-label set, mean binary cross-entropy per label, subset
    accuracy at 0.5 and `{prefix}_map`, the mean average precision (of this rank's share when
    distributed). `answers`, when given, receives a single-label run's answers in one process:
    `right` (per image) and `labels`, in the loader's order."""
    logits, labels = predict_logits(model, loader, ctx)
    if answers is not None and len(labels) and ctx.set_targets is None and not ctx.dist.enabled:
        answers["right"] = (logits.argmax(1) == labels).numpy()
        answers["labels"] = labels.numpy()
    sums = torch.zeros(3, dtype=torch.float64)
    extra: dict[str, float] = {}
    if len(labels) and ctx.set_targets is not None:
        targets = ctx.set_targets.cpu()[labels]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
        sums[0] = loss.sum().item()
        sums[1] = count_correct(logits, labels, dataclasses.replace(ctx, set_targets=ctx.set_targets.cpu()))
        sums[2] = len(labels)
        from imgclf.evaluation.multi_label import mean_average_precision

        extra[f"{prefix}_map"] = mean_average_precision(torch.sigmoid(logits).numpy(), targets.numpy())
    elif len(labels):
        sums[0] = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        sums[1] = (logits.argmax(1) == labels).sum().item()
        sums[2] = len(labels)
    loss_sum, correct, count = all_reduce_sum(sums.to(ctx.device), ctx.dist).tolist()
    if count == 0:
        return {}
    return {
        f"{prefix}_loss": loss_sum / count,
        f"{prefix}_acc": correct / count,
        f"{prefix}_count": count,
        **extra,
    }


def _denormals_flush() -> bool:
    return torch.tensor([1e-39], dtype=torch.float32).item() == 0.0  # 1e-39 is denormal in float32


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal floats flushed to zero while training (as TensorFlow does), then as they were.

    On x86, arithmetic on denormal values is slow, and early training makes some (the README's "Why
    these defaults" gives the time it saves).
    The mode belongs to the processor thread, so it is put back afterwards: other code (numpy,
    Hypothesis) expects IEEE-754 subnormals.
    """
    before = _denormals_flush()
    torch.set_flush_denormal(True)  # returns False, and changes nothing, where the processor cannot
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@denormals_flushed()
def fit(
    state: TrainState,
    train_loader: Loader,
    val_loader: Loader | None,
    ctx: StepContext,
    loss_fn: nn.Module,
    callbacks: Sequence[Callback],
    first_stage: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train until `state.epochs` epochs are done or a callback sets `state.stop`.

    `first_stage` runs after on_train_start and before the first epoch (the transfer recipe's head,
    fitted on cached features, which it records as epoch 0).
    """
    started = state.info.started
    emit(callbacks, "on_train_start", state)
    if first_stage is not None:
        first_stage(state)
    while state.epoch < state.epochs and not state.stop:
        emit(callbacks, "on_epoch_start", state)
        if ctx.augment is not None:
            ctx.augment.reseed(ctx.seed * 100_003 + state.epoch)
        if ctx.mix is not None:
            ctx.mix.reseed(ctx.seed * 100_003 + state.epoch + 50_000)
        epoch_start = time.perf_counter()
        # the largest rate: the head's when the backbone learns at a share of it (recipe transfer)
        lr = max(group["lr"] for group in state.optimizer.param_groups)
        train_stats = train_one_epoch(state, train_loader, ctx, loss_fn, callbacks)
        answers: dict[str, np.ndarray] = {}
        val_stats = evaluate(state.model, val_loader, ctx, answers=answers) if val_loader is not None else {}
        state.val_right, state.val_labels = answers.get("right"), answers.get("labels")
        state.epoch += 1
        row = {
            "epoch": state.epoch,
            "train_loss": train_stats["train_loss"],
            "train_acc": train_stats["train_acc"],
            "val_loss": val_stats.get("val_loss", float("nan")),
            "val_acc": val_stats.get("val_acc", float("nan")),
            "val_count": val_stats.get("val_count", 0.0),
            **({"val_map": val_stats.get("val_map", float("nan"))} if ctx.set_targets is not None else {}),
            "lr": lr,
            "seconds": time.perf_counter() - epoch_start,
            "images_per_s": train_stats["images_per_s"],
            "elapsed": time.perf_counter() - started,
        }
        state.history.append(row)
        state.schedule.step_epoch(row.get(state.monitor))
        emit(callbacks, "on_epoch_end", state)
    emit(callbacks, "on_train_end", state)
    return state
