"""Transfer learning: freeze the backbone and train the head, then unfreeze and fine-tune.

As in the Keras transfer-learning guide: in stage 1 only the new classifier learns and the
backbone's BatchNorm layers keep their ImageNet statistics (they run in eval mode); in stage 2 all of
the network, or its last N blocks, trains on with a lower learning rate, its BatchNorm statistics
following the new data or (`finetune_bn="frozen"`, as the guide does) staying as they were.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from imgclf.models.anatomy import classifier_of, model_blocks, neck_of
from imgclf.training.events import Callback, TrainState

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


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
        trainable += model_blocks(model)[-int(unfreeze) :]
        trainable += neck_of(model)  # e.g. EfficientNet's conv_head and bn2
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
