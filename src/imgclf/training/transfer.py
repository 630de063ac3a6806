"""The transfer recipe's steps: a linear head fitted on cached features, the decision whether and how
long to fine-tune, the rule that stops fine-tuning when it no longer pays, the lower training
resolution with the full one at the end, and the optimizer that gives the backbone a lower learning
rate than the head.

As fastai's `fine_tune` does, the head learns first on the frozen backbone, then everything trains on
from there; unlike its first epoch, the head here is fitted exactly, in seconds, on features computed
once (the bottleneck route), so fine-tuning starts from the best head the features allow. Fine-tuning
keeps the backbone's BatchNorm statistics (as the Keras guide does) and runs for as many epochs as the
data profits from and the time limit allows; the run keeps whichever epoch (the head is epoch 0)
validates best.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from imgclf.config import Config
from imgclf.data.augment import BatchAugment
from imgclf.data.prepared import PreparedData
from imgclf.features.bottleneck import cached_features
from imgclf.features.head import HeadFit, fit_head, fit_multi_label_head, load_head
from imgclf.models.anatomy import backbone_digest, classifier_of
from imgclf.training.events import Callback, TrainState, emit
from imgclf.training.loop import StepContext
from imgclf.training.optim import Schedule, positive_weights
from imgclf.training.phases import Phases
from imgclf.training.speed import inference_speed, training_speed

logger = logging.getLogger(__name__)

# The measurements behind these values are in the README's "Why these defaults".
# optimizer steps fine-tuning aims at, and the bounds on its epochs
FINETUNE_STEPS = 1200
FINETUNE_MIN_EPOCHS = 3
# a longer cosine schedule spends its first epochs at nearly the peak rate, behind the head, where
# the stop rule has to judge it (README: 10- and 15-epoch plans on flowers5 ended below 6-epoch ones)
FINETUNE_MAX_EPOCHS = 6
# below this many training images per class, fine-tuning has too little to learn from
FINETUNE_MIN_PER_CLASS = 10
# the backbone's learning rate as a share of the head's (fastai's fine_tune spreads 1/100..1 over the
# layers; a smaller share learns too slowly, the head's own rate first undoes the head)
BACKBONE_LR_SHARE = 0.3
# what an epoch costs beyond its measured forward and backward passes (augmentation, loading)
EPOCH_OVERHEAD = 1.15
# Fine-tuning's images/s as a share of inference's, at the least: where the whole plan fits even at
# this speed, the training timing probe is skipped (about 2 s, a tenth of a small set's run; the
# first epoch's real duration corrects the plan). Measured: 0.53 with bf16 on Sapphire Rapids; float32
# on AVX2 CPUs runs the backward pass at about twice the forward's, and the frozen part has none.
TRAIN_SPEED_FLOOR = 0.25
# kept free at the end of the time limit for the final evaluation's plots and files (seconds)
FINAL_RESERVE = 15.0
# No fine-tuning when the head already answers all but this share of validation right: there are too
# few mistakes left for an epoch to fix, and a validation set cannot tell such a gain from noise.
FINETUNE_SKIP_ERROR = 0.01
# Fine-tuning stops FINETUNE_PATIENCE epochs after the best epoch (the head included) unless the latest
# is climbing; a climb buys at most FINETUNE_MAX_PATIENCE epochs since the best. See `FineTuneStop`.
FINETUNE_PATIENCE = 2
FINETUNE_MAX_PATIENCE = 4
# The paired tests (McNemar's exact test on the validation images two epochs answer differently,
# one-sided): an epoch climbs when it is right on significantly more images than the epoch before;
# how far the best epoch is ahead of the latest is given in the stop line.
CLIMB_P = 0.1
BEHIND_P = 0.1
# An epoch also climbs when its validation loss is the run's lowest by this share (a loss a hair under
# the lowest is noise, and falls anyway as a cosine rate decays).
CLIMB_LOSS = 0.02


@dataclass
class FineTunePlan:
    epochs: int
    seconds_per_epoch: float
    reason: str
    wanted: int = 0  # the epochs the data asks for, before the time limit
    validation_seconds: float = 0.0


def head_verdict(fit: HeadFit, val_count: int) -> str | None:
    """Why fine-tuning would not pay after this head (None when it may): the head's validation error
    is at most FINETUNE_SKIP_ERROR."""
    if math.isfinite(fit.val_map):  # multi-label: by the mean average precision
        if 1.0 - fit.val_map > FINETUNE_SKIP_ERROR:
            return None
        return (
            f"the head already reaches a validation mAP of {fit.val_map:.4f}, too little left for fine-tuning"
        )
    if val_count == 0 or not math.isfinite(fit.val_acc):
        return None  # nothing to judge by: fine-tune as planned, the last epoch is kept
    wrong = round((1.0 - fit.val_acc) * val_count)
    if 1.0 - fit.val_acc > FINETUNE_SKIP_ERROR:
        return None
    return (
        f"the head already answers {fit.val_acc:.2%} of validation right ({wrong} of {val_count} wrong), "
        "too few mistakes for fine-tuning to fix in its time"
    )


def head_evidence(fit: HeadFit, val_count: int) -> str:
    """The head's errors on validation and on its own training images, in words."""
    if math.isfinite(fit.val_map):
        return f"the head reaches a validation mAP of {fit.val_map:.4f}"
    if val_count == 0 or not math.isfinite(fit.val_acc):
        return f"the head is right on {fit.train_acc:.1%} of its training images, no validation split"
    gap = fit.train_acc - fit.val_acc
    return f"the head leaves {1 - fit.val_acc:.1%} of validation wrong" + (
        f" ({gap:.1%} less right than on its training images)" if gap > 0.02 else ""
    )


def plan_finetune(
    train_count: int,
    val_count: int,
    num_classes: int,
    batch_size: int,
    train_speed: float,
    inference_speed: float,
    seconds_left: float | None,
) -> FineTunePlan:
    """How many fine-tuning epochs: about FINETUNE_STEPS optimizer steps (within FINETUNE_MIN_EPOCHS
    and FINETUNE_MAX_EPOCHS), no more than fit in the time left (with the final evaluation), and none
    when the data is too small to profit or not one epoch fits. Fewer epochs than wanted still run,
    however few: the result grows with the time given, never falls off a cliff when a probe measures
    a little slow (the best epoch is kept, the head included, so epochs that do not pay cost time
    within the limit and nothing else; the stop rule ends them early). `Replan` stretches them after
    the first when the timing probe was pessimistic (a busy machine).

    `train_speed` and `inference_speed` are images per second measured on this hardware.
    """
    steps = max(1, math.ceil(train_count / batch_size))
    wanted = min(FINETUNE_MAX_EPOCHS, max(FINETUNE_MIN_EPOCHS, round(FINETUNE_STEPS / steps)))
    validation = val_count / max(inference_speed, 1e-6)
    per_epoch = EPOCH_OVERHEAD * (train_count / max(train_speed, 1e-6) + validation)

    def plan(epochs: int, reason: str) -> FineTunePlan:
        return FineTunePlan(epochs, per_epoch, reason, wanted, validation)

    if train_count < FINETUNE_MIN_PER_CLASS * num_classes:
        return plan(0, f"fewer than {FINETUNE_MIN_PER_CLASS} training images per class")
    if seconds_left is None:
        return plan(wanted, f"{steps} steps per epoch")
    left = f"{max(seconds_left, 0) / 60:.1f} min of the time limit left"
    fits = int(max(seconds_left - validation - FINAL_RESERVE, 0) // per_epoch)
    # what the planned epochs would need on top of the limit, so the user can buy them
    more = math.ceil(max(wanted * per_epoch + validation + FINAL_RESERVE - seconds_left, 0) / 60)
    buy = f"{wanted} epochs would need about {more} min more (--time-limit MIN)"
    if fits < 1:
        return plan(0, f"not one epoch of about {per_epoch:.0f} s fits ({left}); {buy}")
    if fits < wanted:
        return plan(fits, f"{left}; {buy}")
    return plan(wanted, f"{steps} steps per epoch")


def create_finetune_optimizer(
    model: nn.Module, lr: float, backbone_lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW with the backbone at `backbone_lr` and the classifier at `lr`; no weight decay on biases
    and normalization weights, as timm and torchvision do."""
    head = {id(parameter) for parameter in classifier_of(model).parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in head, parameter.ndim > 1), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": lr if is_head else backbone_lr,
                "weight_decay": weight_decay if decays else 0.0,
            }
            for (is_head, decays), params in sorted(groups.items())
        ]
    )


class Replan(Callback):
    """After the first fine-tuning epoch, fit the planned epochs to the time limit again, from that
    epoch's measured duration (the plan before it had only a short timing probe), and stretch the
    cosine schedule to match. `on_change(epochs)` records the new count (the run's plan.json, for
    --resume).
    """

    def __init__(
        self,
        seconds: float,
        started: float,
        wanted: int,
        validation_seconds: float,
        on_change: Callable[[int], None],
    ) -> None:
        self.seconds = seconds
        self.started = started
        self.wanted = wanted
        self.validation_seconds = validation_seconds
        self.on_change = on_change

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch != 1 or state.epochs < 1:
            return
        left = self.seconds - (time.perf_counter() - self.started) - self.validation_seconds - FINAL_RESERVE
        epoch_seconds = max(state.last.get("seconds", 0.0), 1e-6)
        epochs = min(self.wanted, 1 + int(max(left, 0) // epoch_seconds))
        epochs = max(epochs, min(state.epochs, FINETUNE_MIN_EPOCHS))  # never cut below 3 (the time
        # limit callback still stops the run in time)
        if epochs != state.epochs and state.schedule.replan(epochs):
            logger.info(
                "fine-tuning replanned to %d epochs: the first took %.0f s (%.1f min left)",
                epochs, epoch_seconds, max(left, 0) / 60,
            )  # fmt: skip
            state.epochs = epochs
            self.on_change(epochs)


@dataclass
class HeadStage:
    """The transfer recipe's first stage, recorded as epoch 0: a linear head fitted on the backbone's
    cached features; then the fine-tuning epochs are planned (unless given) from the measured speed
    and the time left, and the schedule is made for them. The planned epochs are run state (and
    `record_plan`'s record for --resume), never written into the config."""

    model: torch.nn.Module
    prepared: PreparedData
    ctx: StepContext
    cfg: Config
    val_name: str | None
    callbacks: list[Callback]
    record_plan: Callable[[int], None] | None
    steps_per_epoch: int
    lr: float
    train_size: tuple[int, int] | None = None  # the fine-tuning epochs' input size, when lower
    phases: Phases = field(default_factory=Phases)  # the run's: features, head and timing probe timed

    def __call__(self, state: TrainState) -> None:
        started = time.perf_counter()
        self.model.eval()
        backbone = backbone_digest(self.model)
        model, prepared, ctx, cfg = self.model, self.prepared, self.ctx, self.cfg
        with self.phases.time("features (the backbone on every image, or the cache)"):
            features = [
                cached_features(model, backbone, prepared, split, ctx, cfg, self.callbacks)
                if split is not None
                else (None, None, None)
                for split in ("train", self.val_name)
            ]
        head_started = time.perf_counter()
        (train_x, train_y, train_speed), (val_x, val_y, val_speed) = features
        image_set = self.prepared.image_set
        if image_set.multi_label:  # one logistic regression per label, on the label-set rows
            table = image_set.set_targets()
            weights = positive_weights(table[train_y]) if self.cfg.train.class_weight == "auto" else None
            val_targets = None if val_y is None else table[val_y]
            fit = fit_multi_label_head(train_x, table[train_y], val_x, val_targets, weights)
        else:
            fit = fit_head(
                train_x,
                train_y,
                val_x,
                val_y,
                len(image_set.classes),
                label_smoothing=self.cfg.train.label_smoothing or 0.0,
            )
        load_head(self.model, fit)
        if val_x is not None and not image_set.multi_label:  # the head's answers, for the stop rule
            val_features = torch.as_tensor(np.asarray(val_x), dtype=torch.float32)
            logits = val_features @ fit.weight.float().T + fit.bias.float()
            state.val_labels = np.asarray(val_y)
            state.val_right = logits.argmax(1).numpy() == state.val_labels
        self.phases.add("head (fitted on the features)", time.perf_counter() - head_started)
        seconds = time.perf_counter() - started
        logger.info(
            "head on cached features: L2 %.3g chosen by %s, %.1f s",
            fit.l2,
            "validation" if val_x is not None else "3-fold cross-validation",
            seconds,
        )
        if self.cfg.train.epochs is None:
            val_count = 0 if val_y is None else len(val_y)
            verdict = head_verdict(fit, val_count)
            if verdict is not None:
                logger.info("no fine-tuning: %s; the head is the model (--epochs N fine-tunes)", verdict)
                self._record(state, 0)
            else:
                evidence = head_evidence(fit, val_count)
                self._plan(state, len(train_y), val_count, train_speed or val_speed, evidence)
        state.schedule = Schedule(
            state.optimizer, self.cfg.train, self.steps_per_epoch, epochs=max(1, state.epochs), lr=self.lr
        )
        row = {
            "epoch": 0,
            "train_loss": fit.train_loss,
            "train_acc": fit.train_acc,
            "val_loss": fit.val_loss,
            "val_acc": fit.val_acc,
            "val_count": float(0 if val_y is None else len(val_y)),
            **({"val_map": fit.val_map} if image_set.multi_label else {}),
            "lr": 0.0,
            "seconds": seconds,
            "images_per_s": len(train_y) / max(seconds, 1e-9),
            "elapsed": time.perf_counter() - state.info.started,
            "stage": "head",
        }
        state.history.append(row)
        emit(self.callbacks, "on_epoch_end", state)  # kept as the best so far, logged, checkpointed
        if val_x is None:  # no validation: the fine-tuned network replaces the head, as trained last
            state.best_value = None

    def _plan(
        self, state: TrainState, train_count: int, val_count: int, speed: float | None, evidence: str
    ) -> None:
        limit = self.cfg.train.time_limit
        with self.phases.time("fine-tuning plan (timing probe)"):
            if speed is None:  # features read from the cache: time the backbone on one batch
                speed = inference_speed(self.model, self.ctx, self.cfg.train.batch_size)
            elapsed = time.perf_counter() - state.info.started
            classes = len(self.prepared.image_set.output_names)
            batch, left = self.cfg.train.batch_size, limit * 60 - elapsed if limit else None
            train_speed = speed * TRAIN_SPEED_FLOOR
            plan = plan_finetune(train_count, val_count, classes, batch, train_speed, speed, left)
            # the whole plan may not fit: measure what a step costs
            probed = plan.epochs < plan.wanted and train_count >= FINETUNE_MIN_PER_CLASS * classes
            if probed:
                train_speed = training_speed(self.model, self.ctx, batch, self.train_size)
                plan = plan_finetune(train_count, val_count, classes, batch, train_speed, speed, left)
        if plan.epochs and limit:  # the first epoch's real duration corrects the probe's estimate
            replan = Replan(
                limit * 60,
                state.info.started,
                plan.wanted,
                plan.validation_seconds,
                lambda epochs: self._record(state, epochs),
            )
            self.callbacks.insert(0, replan)
        if plan.epochs:
            speeds = (
                f"{train_speed:.0f} images/s training, {speed:.0f} inference"
                if probed
                else f"{speed:.0f} images/s inference; training not timed, the plan fits even at "
                f"{TRAIN_SPEED_FLOOR:g} of that"
            )
            logger.info(
                "fine-tuning up to %d epochs of %s %.0f s: %s (%s; %s); it stops when validation "
                "stops improving",
                plan.epochs, "about" if probed else "at most about", plan.seconds_per_epoch, evidence,
                plan.reason, speeds,
            )  # fmt: skip
        else:
            logger.info("no fine-tuning: %s; the head is the model", plan.reason)
        self._record(state, plan.epochs)

    def _record(self, state: TrainState, epochs: int) -> None:
        """The planned epochs: the run's state, and its record for --resume."""
        state.epochs = epochs
        if self.record_plan is not None:
            self.record_plan(epochs)


def mcnemar(before: np.ndarray, after: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on two sets of answers (right or not) to the same images: the images only
    `after` gets right, those only `before` gets right, and the one-sided p-value of seeing at least
    that many gains were neither better (each differing image a fair coin)."""
    gained = int((after & ~before).sum())
    lost = int((before & ~after).sum())
    count = gained + lost
    if count == 0:
        return 0, 0, 1.0

    def log_term(k: int) -> float:
        return math.lgamma(count + 1) - math.lgamma(k + 1) - math.lgamma(count - k + 1) - count * math.log(2)

    return gained, lost, min(1.0, sum(math.exp(log_term(k)) for k in range(gained, count + 1)))


class FineTuneStop(Callback):
    """Stop fine-tuning when validation gives evidence that it no longer pays, and not before.

    It stops FINETUNE_PATIENCE epochs after the best epoch (the head, epoch 0, included), so at most that
    many epochs run after the one that is kept, unless the latest epoch climbs: it is right on
    significantly more validation images than the epoch before (`mcnemar`, p < CLIMB_P: one or two images
    more on a small validation split are noise, not a trend), or its validation loss is the run's lowest
    by CLIMB_LOSS. A climbing fine-tune is left to climb, up to FINETUNE_MAX_PATIENCE epochs after
    the best; one that does not climb is stopped whatever its learning rate. Without the answers
    (multi-label, several processes) a rise of the metric is a climb. Never stops on the last planned
    epoch, nor without validation. Runs after KeepBest; says why in one line, with how far the best
    epoch is ahead."""

    def __init__(self, patience: int = FINETUNE_PATIENCE, most: int = FINETUNE_MAX_PATIENCE) -> None:
        self.patience, self.most = patience, most
        self.answers: tuple[np.ndarray, np.ndarray] | None = None  # the latest epoch's (right, labels)
        self.best: tuple[np.ndarray, np.ndarray] | None = None  # the best epoch's

    def on_epoch_end(self, state: TrainState) -> None:
        before, self.answers = self.answers, None
        if state.val_right is not None and state.val_labels is not None:
            self.answers = (np.asarray(state.val_right, bool), np.asarray(state.val_labels))
        if state.improved or self.best is None:
            self.best = self.answers
        if state.epoch == 0 or len(state.history) < 2 or state.best_epoch is None:
            return
        metric = "val_map" if "val_map" in state.last else "val_acc"  # multi-label: by mAP
        value = state.last.get(metric)
        if value is None or not math.isfinite(value) or state.epoch >= state.epochs:
            return
        since = state.epoch - state.best_epoch
        if since < self.patience:
            return
        climbing, how = self._climbing(state, metric, before)
        if climbing and since < self.most:
            return
        against_best = self._behind(state, metric)
        best = state.best_value if state.best_value is not None else float("nan")
        state.stop = True
        state.stop_reason = (
            f"early stop: fine-tuning no longer pays: {since} epochs since the best ({metric} {best:.4f}, "
            f"epoch {state.best_epoch}{' — the head' if state.best_epoch == 0 else ''}); epoch "
            f"{state.epoch} is {against_best} and {'still' if climbing else 'not'} climbing ({how})"
            f"{', the most a climb is given' if climbing else ''}; the best epoch is kept"
        )

    def _paired(self, first: tuple[np.ndarray, np.ndarray] | None) -> tuple[int, int, float] | None:
        """McNemar of the latest epoch's answers against `first`'s: (gained, lost, p that no gain)."""
        now = self.answers
        if first is None or now is None or not np.array_equal(first[1], now[1]):
            return None
        return mcnemar(first[0], now[0])

    def _climbing(
        self, state: TrainState, metric: str, before: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[bool, str]:
        """Whether the latest epoch climbs, and the evidence in words."""
        losses = [row.get("val_loss", float("nan")) for row in state.history]
        loss, low = losses[-1], min((x for x in losses[:-1] if math.isfinite(x)), default=float("inf"))
        if math.isfinite(loss) and loss < low * (1 - CLIMB_LOSS):
            return True, f"val_loss {loss:.4f}, the lowest yet ({low:.4f} before)"
        words = f"val_loss {loss:.4f} against the lowest {low:.4f}"
        paired = self._paired(before)
        if paired is not None:
            gained, lost, p = paired
            words = (
                f"{gained} {_images(gained)} right that epoch {state.epoch - 1} missed, {lost} the "
                f"other way, p = {p:.2f}; {words}"
            )
            return p < CLIMB_P, words
        value, previous = state.last.get(metric), state.history[-2].get(metric)
        rose = value is not None and previous is not None and value > previous
        return rose, f"{metric} {value:.4f} after {previous:.4f}; {words}"

    def _behind(self, state: TrainState, metric: str) -> str:
        """How far the best epoch is ahead of the latest, in words (McNemar where the answers are)."""
        now, best = self.answers, self.best
        if now is not None and best is not None and np.array_equal(now[1], best[1]):
            lost, gained, p = mcnemar(now[0], best[0])  # the best epoch's gain over the latest
            return (
                f"{'behind' if p < BEHIND_P else 'not clearly behind'} it ({lost} {_images(lost)} it gets "
                f"right and epoch {state.epoch} misses, {gained} the other way, p = {p:.2f})"
            )
        value, best = state.last.get(metric, float("nan")), state.best_value
        behind = best is not None and value < best
        return f"{'behind' if behind else 'level with'} it ({metric} {value:.4f})"


def _images(count: int) -> str:
    return "image" if count == 1 else "images"


class ProgressiveResize(Callback):
    """Fine-tuning epochs train at the lower `train_size` of the augmentation, the last planned one at
    the model's full size (as progressive resizing and FixRes do): each low-resolution step costs about
    half as much, and the full-size epoch adapts the network to the size it is evaluated and used at.
    Validation always runs at the full size."""

    def __init__(self, augment: BatchAugment, full_size: tuple[int, int]) -> None:
        self.augment = augment
        self.low_size = augment.size
        self.full_size = full_size

    def on_epoch_start(self, state: TrainState) -> None:
        last = state.epoch + 1 >= state.epochs
        self.augment.size = self.full_size if last else self.low_size
