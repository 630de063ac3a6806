"""A head fitted on cached features, then the last --unfreeze blocks fine-tuned while validation says it pays.

imgclf's default for a pretrained backbone: a linear head fitted exactly on the backbone's cached
features is epoch 0; then, where the head leaves mistakes to fix, the classifier and the last
blocks fine-tune from it at a share of the head's learning rate (BatchNorm statistics kept), for
epochs planned from the measured speed and the time limit, the best epoch kept by validation
accuracy (see `imgclf.training.transfer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from imgclf.config import Config
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import ConfigError
from imgclf.training.events import Callback
from imgclf.training.finetune import set_trainable
from imgclf.training.loop import StepContext
from imgclf.training.optim import scale_lr
from imgclf.training.strategy import RecipeDefaults, Strategy
from imgclf.training.transfer import (
    BACKBONE_LR_SHARE,
    FineTuneStop,
    HeadStage,
    ProgressiveResize,
    create_finetune_optimizer,
)

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer


class TransferStrategy(Strategy):
    """The head fitted on cached features (epoch 0), then the last blocks fine-tuned from it while
    validation says it pays (with --finetune-size, at a lower resolution but for the last epoch)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.planned = cfg.train.epochs is None  # imgclf plans the epochs: it also decides when to stop

    @classmethod
    def resolve(cls, cfg: Config) -> list[str]:
        if not (cfg.model.pretrained or cfg.model.weights):
            raise ConfigError("--recipe transfer fine-tunes a pretrained backbone: add --pretrained")
        if cfg.train.head_only or cfg.train.freeze_epochs:
            raise ConfigError("--recipe transfer has its own stages: drop --head-only and --freeze-epochs")
        return []

    def check(self, trainer: Trainer) -> None:
        if trainer.hardware.dist.enabled:
            raise ConfigError("--recipe transfer runs in one process; use --recipe plain with --devices")

    def train_size(self, spec: PreprocessSpec) -> tuple[int, int]:
        side = self.cfg.train.finetune_size
        if not side or side >= min(spec.height, spec.width):
            return spec.height, spec.width
        scale = side / min(spec.height, spec.width)
        return round(spec.height * scale), round(spec.width * scale)

    def set_trainable(self, model: nn.Module) -> list[nn.Module]:
        # after the head stage the network's last --unfreeze blocks train on; BatchNorm keeps its
        # statistics (--finetune-bn frozen)
        train = self.cfg.train
        return set_trainable(model, train.unfreeze, train.finetune_bn == "frozen")

    def create_optimizer(self, trainer: Trainer, lr: float) -> torch.optim.Optimizer:
        train = self.cfg.train
        global_batch = train.batch_size * trainer.hardware.dist.world_size
        backbone_lr = scale_lr(
            train.finetune_lr or lr * BACKBONE_LR_SHARE, global_batch, "none", train.lr_base_batch
        )
        return create_finetune_optimizer(trainer.network.model, lr, backbone_lr, train.weight_decay)

    def stage_callbacks(self, trainer: Trainer) -> list[Callback]:
        augment = trainer.optimisation.ctx.augment
        full_size = (trainer.prepared.spec.height, trainer.prepared.spec.width)
        if augment is None or augment.size == full_size:
            return []
        return [ProgressiveResize(augment, full_size)]

    def stop_rules(self) -> list[Callback]:
        """--patience when given; else, with epochs imgclf planned, stop once fine-tuning no longer pays."""
        if self.cfg.train.patience is None and self.planned:
            return [FineTuneStop()]
        return super().stop_rules()

    def first_stage(self, trainer: Trainer) -> HeadStage:
        ctx = trainer.optimisation.ctx
        return HeadStage(
            model=trainer.network.model,
            prepared=trainer.prepared,
            ctx=StepContext(
                device=ctx.device,
                spec=trainer.prepared.spec,
                channels_last=ctx.channels_last,
                autocast_dtype=ctx.autocast_dtype,
                frozen_norm=ctx.frozen_norm,
            ),
            cfg=self.cfg,
            val_name=trainer.validation_split,
            callbacks=trainer.loop_callbacks,
            record_plan=trainer.folder.write_plan if trainer.hardware.dist.is_main else None,
            steps_per_epoch=trainer.loaders.steps_per_epoch,
            lr=trainer.optimisation.lr,
            train_size=ctx.augment.size if ctx.augment is not None else None,
            phases=trainer.phases,
        )


STRATEGY = TransferStrategy
DEFAULTS = RecipeDefaults(
    lr=1e-3,
    label_smoothing=0.1,
    warmup_epochs=0.3,
    monitor="val_acc",
    finetune_bn="frozen",
    preset="strong",
    epochs=None,
    batch_size=32,
    # the classifier and the backbone's last 3 blocks fine-tune; the frozen part runs without gradients
    # (the README's "Why these defaults" gives the speeds measured)
    unfreeze="3",
)
