"""Optimizers, learning-rate schedules and the loss, built from the train config."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from imgclf.config import TrainConfig


def create_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """adam, adamw, sgd (momentum, nesterov) or rmsprop over the trainable parameters.

    Weight decay skips biases and normalization weights (1-D tensors), as timm and torchvision do.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.RMSprop(groups, lr=lr, alpha=0.9)  # Keras' rho=0.9; momentum is for sgd


def scale_lr(lr: float, batch_size: int, scaling: str, base_batch: int = 64) -> float:
    """The learning rate for `batch_size` images per step (all processes together).

    "linear" multiplies by batch_size / base_batch (Goyal et al., for SGD); "sqrt" by its square
    root (gentler, suits Adam-type optimizers); "none" keeps `lr` as given.
    """
    if scaling == "none" or batch_size == base_batch:
        return lr
    ratio = batch_size / base_batch
    return lr * (ratio if scaling == "linear" else math.sqrt(ratio))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_fraction: float = 0.01) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to `final_fraction`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, progress))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_constant(step: int, warmup_steps: int) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


class Schedule:
    """A learning-rate schedule that knows whether it steps per batch or per epoch."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        steps_per_epoch: int,
        epochs: int | None = None,
        lr: float | None = None,
    ) -> None:
        self.kind = cfg.schedule
        lr = cfg.lr if lr is None else lr
        total = (cfg.epochs if epochs is None else epochs) * steps_per_epoch
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.steps_per_epoch, self.warmup = steps_per_epoch, warmup
        self.per_batch = self.kind in ("cosine", "onecycle", "constant")
        if self.kind == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, warmup, total)
            )
        elif self.kind == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=lr,
                total_steps=total + 1,
                pct_start=max(0.05, min(0.5, warmup / max(1, total))) if warmup else 0.25,
            )
        elif self.kind == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min" if cfg.monitor == "val_loss" else "max", factor=0.5, patience=2
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_constant(step, warmup)
            )

    def replan(self, epochs: int) -> bool:
        """Stretch or shorten a cosine schedule to `epochs` in all, from where it stands (the steps taken
        keep their rates); False for the other kinds, which keep their length."""
        if self.kind != "cosine":
            return False
        total, warmup = epochs * self.steps_per_epoch, self.warmup
        self.scheduler.lr_lambdas = [
            lambda step: warmup_cosine(step, warmup, total) for _ in self.scheduler.lr_lambdas
        ]
        return True

    def step_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def step_epoch(self, monitored: float | None) -> None:
        if self.kind == "plateau" and monitored is not None and math.isfinite(monitored):
            self.scheduler.step(monitored)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """'balanced' weights n_samples / (n_classes · count), as scikit-learn's compute_class_weight."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


# a rare label's positive weight (negatives / positives) is capped: a label on 1 image in 500 would
# otherwise weigh its positives 500 times and flood the model with false alarms
MAX_POSITIVE_WEIGHT = 20.0


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Per label, negatives / positives among the training images (at most MAX_POSITIVE_WEIGHT, at
    least 1): binary cross-entropy then counts a rare label's positives as much as its negatives."""
    positives = targets.sum(axis=0).astype(np.float64)
    negatives = len(targets) - positives
    weights = np.clip(negatives / np.maximum(positives, 1.0), 1.0, MAX_POSITIVE_WEIGHT)
    return torch.tensor(weights, dtype=torch.float32)


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy of one sigmoid per label, for batches whose labels are label-set indices
    (`set_targets`, label sets × labels, gives each its 0/1 vector; see `ImageSet.set_targets`).

    Binary cross-entropy is linear in the target, so MixUp's and CutMix's λ·loss(labels) +
    (1-λ)·loss(other labels) is exactly the loss of the mixed label vector λ·t + (1-λ)·t'.
    """

    def __init__(self, set_targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("set_targets", set_targets.float())
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = self.set_targets[labels]
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


def create_loss(
    cfg: TrainConfig, weights: torch.Tensor | None, set_targets: torch.Tensor | None = None
) -> nn.Module:
    """Cross-entropy (class `weights`, label smoothing); with `set_targets` (a multi-label set) binary
    cross-entropy per label, `weights` then being the labels' positive weights."""
    if set_targets is not None:
        return MultiLabelLoss(set_targets, weights)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
