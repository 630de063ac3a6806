"""Transfer learning: freeze the backbone and train the head, then unfreeze and fine-tune.

As in the Keras transfer-learning guide: in stage 1 only the new classifier learns and the
backbone's BatchNorm layers keep their ImageNet statistics (they run in eval mode); in stage 2 all of
the network, or its last N blocks, trains on with a lower learning rate, its BatchNorm statistics
following the new data or (`finetune_bn="frozen"`, as the guide does) staying as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from imgclf.training.events import Callback, TrainState

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer (timm's `get_classifier()`, or the builtins' last head layer)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    return model.head[-1]


def penultimate_features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The features the classifier sees (the tutorials' "bottleneck features")."""
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(inputs), pre_logits=True)
    return model.head[:-1](model.features(inputs))


def backbone_digest(model: nn.Module) -> str:
    """A digest of every weight the penultimate features depend on: all but the classifier's.

    Names the backbone by what it holds, not by where its weights came from (a `--weights` file
    replaced at the same path, another hub revision), so cached bottleneck features never outlive it.
    """
    classifier = {id(tensor) for tensor in classifier_of(model).state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in classifier:
            continue
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(values.view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages in order, last ones nearest the head."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if stages:
        return stages
    if hasattr(model, "stages"):
        return list(model.stages)
    return [m for m in model.children() if m is not classifier_of(model)]


def set_trainable(model: nn.Module, unfreeze: str | None, frozen_bn: bool = False) -> list[nn.Module]:
    """Make the classifier trainable plus: nothing (None), everything ("all"), or the last N blocks.

    Returns the normalization layers that stay frozen: they must run in eval mode while training.
    With `frozen_bn` every BatchNorm layer runs in eval mode (its ImageNet statistics stay), trainable
    or not, as the Keras transfer-learning guide fine-tunes.
    """
    classifier = classifier_of(model)
    for parameter in model.parameters():
        parameter.requires_grad = unfreeze == "all"
    trainable: list[nn.Module] = [classifier]
    if unfreeze not in (None, "all"):
        blocks = _blocks(model)
        trainable += blocks[-int(unfreeze) :]
        # layers between the last block and the classifier (e.g. EfficientNet's conv_head, bn2)
        for name in ("conv_head", "bn2", "norm", "head_norm", "fc_norm"):
            if isinstance(getattr(model, name, None), nn.Module):
                trainable.append(getattr(model, name))
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True
    if frozen_bn:
        return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if unfreeze == "all":
        return []
    live = {id(m) for module in trainable for m in module.modules()}
    return [m for m in model.modules() if isinstance(m, NORM_TYPES) and id(m) not in live]


class FineTuneStages(Callback):
    """At the start of epoch `freeze_epochs`, unfreeze and rebuild optimizer and schedule.

    `rebuild(state)` makes the stage-2 optimizer and schedule; `frozen_norm` is the live list the loop
    keeps in eval mode (emptied or shrunk here).
    """

    def __init__(
        self,
        freeze_epochs: int,
        unfreeze: str,
        frozen_norm: list[nn.Module],
        rebuild: Callable[[TrainState], None],
        frozen_bn: bool = False,
    ) -> None:
        self.freeze_epochs = freeze_epochs
        self.unfreeze = unfreeze
        self.frozen_bn = frozen_bn
        self.frozen_norm = frozen_norm
        self.rebuild = rebuild
        self.done = False

    def enter_stage_two(self, state: TrainState) -> None:
        self.frozen_norm[:] = set_trainable(state.model, self.unfreeze, self.frozen_bn)
        self.rebuild(state)
        self.done = True

    def on_epoch_start(self, state: TrainState) -> None:
        if not self.done and state.epoch >= self.freeze_epochs:
            self.enter_stage_two(state)
