"""The head alone on the frozen backbone for --freeze-epochs N, then the network fine-tunes (Keras' guide).

Stage 1 trains the new classifier while the backbone stays frozen (its BatchNorm layers in eval
mode); from epoch N the network, or its last --unfreeze blocks, fine-tunes with a new optimizer at
--finetune-lr (the head's learning rate / 10). --epochs counts both stages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from imgclf.config import Config
from imgclf.errors import ConfigError
from imgclf.training.events import Callback, TrainState
from imgclf.training.finetune import FineTuneStages, set_trainable
from imgclf.training.loop import StepContext, compile_for_training, wrap_for_ranks
from imgclf.training.optim import Schedule, create_optimizer, scale_lr
from imgclf.training.recipes.plain import DEFAULTS as PLAIN
from imgclf.training.strategy import Strategy

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer

logger = logging.getLogger(__name__)


class StagedStrategy(Strategy):
    """The head alone on the frozen backbone, then fine-tuning from epoch --freeze-epochs."""

    @classmethod
    def resolve(cls, cfg: Config) -> list[str]:
        """The two stages' lengths: --epochs is the whole run, --finetune-epochs the second stage; one
        follows from the other, and with neither the run lasts the plain recipe's 10 epochs."""
        train = cfg.train
        freeze = train.freeze_epochs
        if freeze < 1:
            raise ConfigError(
                "--recipe staged trains the head alone first: give --freeze-epochs N (1 or more)"
            )
        if train.epochs is not None and train.finetune_epochs:
            if train.epochs != freeze + train.finetune_epochs:
                raise ConfigError(
                    f"--epochs {train.epochs} is the whole run, but --freeze-epochs {freeze} + "
                    f"--finetune-epochs {train.finetune_epochs} make {freeze + train.finetune_epochs}: "
                    "give --epochs or --finetune-epochs"
                )
            return []
        if train.epochs is not None:
            if train.epochs <= freeze:
                raise ConfigError(
                    f"--epochs {train.epochs} leaves no fine-tuning after --freeze-epochs {freeze}: "
                    f"give more epochs (the whole run) or --recipe head-only"
                )
            train.finetune_epochs = train.epochs - freeze
            return []
        line = None
        if not train.finetune_epochs:
            train.finetune_epochs = max(1, (PLAIN.epochs or 10) - freeze)
            line = (
                f"recipe staged: the head alone for {freeze} epochs, then {train.finetune_epochs} of "
                "fine-tuning (--epochs N sets the whole run)"
            )
        train.epochs = freeze + train.finetune_epochs
        return [line] if line else []

    def set_trainable(self, model: nn.Module) -> list[nn.Module]:
        return set_trainable(model, None)

    def create_schedule(self, optimizer, steps_per_epoch, lr, epochs):
        train = self.cfg.train
        return Schedule(optimizer, train, steps_per_epoch, epochs=train.freeze_epochs, lr=lr)

    def stage_callbacks(self, trainer: Trainer) -> list[Callback]:
        train, hardware = self.cfg.train, trainer.hardware
        global_batch = train.batch_size * hardware.dist.world_size
        finetune_lr = scale_lr(
            train.finetune_lr or train.lr / 10, global_batch, train.lr_scaling, train.lr_base_batch
        )
        ctx = trainer.optimisation.ctx
        rebuild = RebuildForFineTuning(
            trainer.network.model, ctx, self.cfg, trainer.loaders.steps_per_epoch, finetune_lr
        )
        self.stages = FineTuneStages(
            train.freeze_epochs,
            train.unfreeze,
            ctx.frozen_norm,
            rebuild,
            frozen_bn=train.finetune_bn == "frozen",
        )
        return [self.stages]

    def resume(self, state: TrainState, epoch: int) -> None:
        """Resuming in stage 2: the optimizer state saved belongs to the fine-tuning stage."""
        if epoch >= self.cfg.train.freeze_epochs:
            self.stages.enter_stage_two(state)


class RebuildForFineTuning:
    """When the backbone unfreezes, a new optimizer and schedule for the fine-tuning epochs at the
    fine-tuning learning rate (the network rewrapped to see its newly trainable weights)."""

    def __init__(
        self, model: torch.nn.Module, ctx: StepContext, cfg: Config, steps_per_epoch: int, lr: float
    ) -> None:
        self.model, self.ctx, self.cfg = model, ctx, cfg
        self.steps_per_epoch, self.lr = steps_per_epoch, lr

    def __call__(self, state: TrainState) -> None:
        train = self.cfg.train
        wrap_for_ranks(self.model, self.ctx)  # DistributedDataParallel must see the newly trainable weights
        compile_for_training(self.model, self.ctx, train.compile)
        state.optimizer = create_optimizer(state.model, train, lr=self.lr)
        epochs = max(1, train.finetune_epochs)
        state.schedule = Schedule(state.optimizer, train, self.steps_per_epoch, epochs=epochs, lr=self.lr)
        logger.info(
            "fine-tuning from epoch %d: unfroze %s, learning rate %.2e",
            state.epoch + 1,
            "all layers" if train.unfreeze == "all" else f"the last {train.unfreeze} blocks",
            self.lr,
        )


STRATEGY = StagedStrategy
DEFAULTS = PLAIN
