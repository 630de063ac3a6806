"""A linear head fitted exactly on features: multinomial logistic regression (L-BFGS) on
standardized features, its L2 strength chosen by validation (or cross-validation); for a multi-label
set one logistic regression per label (`fit_multi_label_head`). The transfer recipe's first stage
and the label check (`check --labels`) both fit it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgclf.models.anatomy import classifier_of

# L2 strengths tried for the head (on standardized features, per mean cross-entropy), strongest first
HEAD_L2 = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
# with a prior head the grid starts far stronger: at 1,000 the fit is all but the prior itself
HEAD_L2_PRIOR = (1000.0, 300.0, 100.0, 30.0, 10.0, 3.0, *HEAD_L2)
# weaker strengths, tried one by one only while the weakest tried so far is the best (well-separated
# classes, where validation keeps asking for less)
HEAD_L2_WEAKER = (0.001, 0.0003, 0.0001)
HEAD_MAX_ITERATIONS = 300
# each feature is divided by its standard deviation plus this share of the median one (`standardized`)
SCALE_FLOOR = 1.0


@dataclass
class HeadFit:
    """A linear head fitted on features: weights for the raw (unstandardized) features."""

    weight: torch.Tensor  # classes × features
    bias: torch.Tensor  # classes
    l2: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_map: float = float("nan")  # multi-label heads: validation mean average precision


def bce_loss(pos_weight: torch.Tensor | None = None):
    """Binary cross-entropy per label (mean over samples and labels), for multi-label heads."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        weight = None if pos_weight is None else pos_weight.to(logits)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)

    return loss


def standardized(
    train_features: np.ndarray, val_features: np.ndarray | None, floor: float = SCALE_FLOOR
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray, np.ndarray]:
    """Features centred by the training split's mean and divided by its standard deviation plus
    `floor` times the median one (float64), the validation split's too (None without one), and the
    mean and scale used; `floor` 0 is unit variance.

    Not unit variance: a backbone's feature that the training images hardly light (a channel
    nearly constant on them) would be blown up to the same weight as the informative ones, and its
    noise on new images would become large, confident logits. With the floor such a feature stays
    small, and the L2 penalty keeps it out. Measured on Lite0 features, heads fitted on random
    draws of N images per class (a fifth for validation) and scored on the images outside the draw
    (accuracy, log loss; unit variance → this floor): flowers5 at 20 per class 0.580 → 0.599 (1.70 →
    1.08), at 250 0.721 → 0.725, at 800 0.734 → 0.755, rose vs tulip at 125 0.766 → 0.772; MNIST at
    20 per class 0.784 → 0.844 (1.27 → 0.75), at 100 0.903 → 0.925; data nobody tuned on:
    scikit-learn's 8×8 digits at 20 per class 0.788 → 0.864, at 80 0.904 → 0.935; LFW faces vs
    non-faces at 20 per class 0.975 → 0.994."""
    mean = train_features.mean(0)
    deviation = train_features.std(0)
    scale = deviation + floor * float(np.median(deviation)) + 1e-6
    x = torch.tensor((train_features - mean) / scale, dtype=torch.float64)
    xv = None
    if val_features is not None and len(val_features) > 0:
        xv = torch.tensor((val_features - mean) / scale, dtype=torch.float64)
    return x, xv, mean, scale


def unstandardized(
    weight: torch.Tensor, bias: torch.Tensor, mean: np.ndarray, scale: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """A head fitted on standardized features as a layer for the raw ones (outputs × features)."""
    scale_t = torch.tensor(scale, dtype=torch.float64)
    return (weight / scale_t[:, None]).T, bias - torch.tensor(mean / scale, dtype=torch.float64) @ weight


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    l2: float,
    start: tuple[torch.Tensor, torch.Tensor],
    label_smoothing: float = 0.0,
    loss_fn=nn.functional.cross_entropy,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression by L-BFGS from `start`: softmax cross-entropy (`loss_fn`), or one
    sigmoid per label with `bce_loss`. The L2 penalty pulls the weights toward 0, or weights and
    biases toward `prior`'s."""
    weight = start[0].clone().requires_grad_(True)
    bias = start[1].clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=HEAD_MAX_ITERATIONS,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ weight + bias
        loss = loss_fn(logits, labels, label_smoothing=label_smoothing)
        if prior is None:
            loss = loss + l2 * weight.square().sum()
        else:
            loss = loss + l2 * ((weight - prior[0]).square().sum() + (bias - prior[1]).square().sum())
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _weaker(tried: list[float], best_l2: float) -> list[float]:
    """The next of HEAD_L2_WEAKER to try after `tried`: one, where the weakest tried is the best."""
    if best_l2 != tried[-1]:
        return []
    return [l2 for l2 in HEAD_L2_WEAKER if l2 < best_l2][:1]


def _scores(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    logits = features @ weight + bias
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).double().mean().item()


def fit_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray | None,
    val_labels: np.ndarray | None,
    num_classes: int,
    label_smoothing: float = 0.0,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
    floor: float = SCALE_FLOOR,
) -> HeadFit:
    """Multinomial logistic regression on standardized features (L-BFGS), its L2 strength chosen by
    validation accuracy (then loss); without validation data, by 3-fold cross-validation.

    `prior`: a head on these features (raw weight K×D, bias K) that the L2 penalty pulls toward
    instead of zero, the strengths from HEAD_L2_PRIOR, the first fit starting from it. `imgclf
    update` gives the run's own head, trained with its backbone and augmentation: on 238 training
    photos of a fine-tuned run, a head fitted from zero fits them all and does worse on validation
    than the one it replaces (0.820 → 0.803 with one label corrected; 0.820 from the prior).

    `floor`: `standardized`'s, the share of the median deviation added to every feature's scale.

    The head is fitted with the `label_smoothing` fine-tuning will use: a head fitted without it is
    far more confident than that loss wants, and its first fine-tuning steps, with large gradients,
    undo much of what the backbone knew (flowers5: 0.73 → 0.58 after the first epoch).
    """
    x, xv, mean, scale = standardized(train_features, val_features, floor)
    y = torch.as_tensor(train_labels, dtype=torch.int64)
    has_val = xv is not None
    if has_val:
        yv = torch.as_tensor(val_labels, dtype=torch.int64)
    zero = (
        torch.zeros(x.shape[1], num_classes, dtype=torch.float64),
        torch.zeros(num_classes, dtype=torch.float64),
    )
    centre = None
    if prior is not None:  # in standardized terms: x·(scale·Wᵀ) + (b + mean·Wᵀ) gives the same logits
        raw_w = torch.as_tensor(prior[0], dtype=torch.float64)
        weights = (torch.as_tensor(scale, dtype=torch.float64)[:, None] * raw_w.T).contiguous()
        offset = torch.as_tensor(prior[1], dtype=torch.float64)
        centre = (weights, offset + torch.as_tensor(mean, dtype=torch.float64) @ raw_w.T)
        zero = centre
    best: tuple[float, float, float, tuple[torch.Tensor, torch.Tensor]] | None = None
    start = zero
    strengths = list(HEAD_L2 if prior is None else HEAD_L2_PRIOR)
    for l2 in strengths:  # strongest first, each fit from the last answer
        start = fit_logistic(x, y, l2, start, label_smoothing, prior=centre)
        if has_val:
            loss, acc = _scores(xv, yv, *start)
        else:
            loss, acc = _cross_validate(x, y, l2, zero, label_smoothing, centre)
        if best is None or acc > best[1] + 1e-9 or (abs(acc - best[1]) <= 1e-9 and loss < best[0]):
            best = (loss, acc, l2, start)
        strengths += _weaker(strengths, best[2])
    assert best is not None
    val_loss, val_acc, l2, (weight, bias) = best
    train_loss, train_acc = _scores(x, y, weight, bias)
    raw_weight, raw_bias = unstandardized(weight, bias, mean, scale)
    return HeadFit(
        raw_weight.float(),
        raw_bias.float(),
        l2,
        train_loss,
        train_acc,
        val_loss if has_val else float("nan"),
        val_acc if has_val else float("nan"),
    )


def _cross_validate(
    x: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    zero: tuple[torch.Tensor, torch.Tensor],
    label_smoothing: float,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[float, float]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    folds = order.chunk(3)
    losses, accuracies = [], []
    for held in folds:
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        weight, bias = fit_logistic(x[keep], y[keep], l2, zero, label_smoothing, prior=prior)
        loss, acc = _scores(x[held], y[held], weight, bias)
        losses.append(loss)
        accuracies.append(acc)
    return float(np.mean(losses)), float(np.mean(accuracies))


def _multi_label_scores(
    features: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[float, float, float]:
    """(binary cross-entropy, subset accuracy at 0.5, mAP) of a multi-label head."""
    from imgclf.evaluation.multi_label import mean_average_precision

    logits = features @ weight + bias
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
    accuracy = ((logits > 0) == (targets > 0.5)).all(1).double().mean().item()
    return loss, accuracy, mean_average_precision(torch.sigmoid(logits).numpy(), targets.numpy())


def fit_multi_label_head(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    val_features: np.ndarray | None,
    val_targets: np.ndarray | None,
    pos_weight: torch.Tensor | None = None,
    floor: float = SCALE_FLOOR,
) -> HeadFit:
    """One logistic regression per label (fitted together by L-BFGS) on standardized features, the
    L2 strength chosen by validation mAP (then loss); without validation data, by 3-fold
    cross-validation. `pos_weight`: binary cross-entropy's positive weights (--class-weight auto)."""
    x, xv, mean, scale = standardized(train_features, val_features, floor)
    t = torch.as_tensor(train_targets, dtype=torch.float64)
    has_val = xv is not None
    if has_val:
        tv = torch.as_tensor(val_targets, dtype=torch.float64)
    labels = t.shape[1]
    zero = (torch.zeros(x.shape[1], labels, dtype=torch.float64), torch.zeros(labels, dtype=torch.float64))
    loss_fn = bce_loss(pos_weight)
    best: tuple[float, float, float, float, tuple[torch.Tensor, torch.Tensor]] | None = None
    start = zero
    strengths = list(HEAD_L2)
    for l2 in strengths:  # strongest first: each fit starts from the last one's answer
        start = fit_logistic(x, t, l2, start, loss_fn=loss_fn)
        if has_val:
            loss, accuracy, average = _multi_label_scores(xv, tv, *start)
        else:
            loss, accuracy, average = _cross_validate_multi_label(x, t, l2, zero, loss_fn)
        if best is None or average > best[2] + 1e-9 or (abs(average - best[2]) <= 1e-9 and loss < best[0]):
            best = (loss, accuracy, average, l2, start)
        strengths += _weaker(strengths, best[3])
    assert best is not None
    val_loss, val_acc, val_map, l2, (weight, bias) = best
    train_loss, train_acc, _ = _multi_label_scores(x, t, weight, bias)
    raw_weight, raw_bias = unstandardized(weight, bias, mean, scale)
    nan = float("nan")
    return HeadFit(
        raw_weight.float(),
        raw_bias.float(),
        l2,
        train_loss,
        train_acc,
        val_loss if has_val else nan,
        val_acc if has_val else nan,
        val_map if has_val else nan,
    )


def _cross_validate_multi_label(
    x: torch.Tensor, t: torch.Tensor, l2: float, zero: tuple[torch.Tensor, torch.Tensor], loss_fn
) -> tuple[float, float, float]:
    order = torch.randperm(len(t), generator=torch.Generator().manual_seed(0))
    scores = []
    for held in order.chunk(3):
        keep = torch.ones(len(t), dtype=torch.bool)
        keep[held] = False
        weight, bias = fit_logistic(x[keep], t[keep], l2, zero, loss_fn=loss_fn)
        scores.append(_multi_label_scores(x[held], t[held], weight, bias))
    loss, accuracy, average = (float(np.nanmean([s[i] for s in scores])) for i in range(3))
    return loss, accuracy, average


def load_head(model: nn.Module, fit: HeadFit) -> None:
    """Put a fitted head into the network's classifier."""
    classifier = classifier_of(model)
    with torch.no_grad():
        classifier.weight.copy_(fit.weight.to(classifier.weight))
        classifier.bias.copy_(fit.bias.to(classifier.bias))
