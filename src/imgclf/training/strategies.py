"""The recipes as strategies: each says, through a few named hooks, which layers learn, how they
learn and in what stages; `run_training` calls the hooks in order and holds no recipe of its own.

    set_trainable → trained_module → loaders → create_optimizer → create_schedule → callbacks →
    first_stage

- `PlainStrategy`: every layer trains from the first epoch, as configured (`--recipe plain`).
- `HeadOnlyStrategy`: the tutorials' bottleneck route (`--head-only`): the backbone runs once per
  image, its features are cached and only the classifier trains on them.
- `StagedStrategy`: the Keras guide's freeze → fine-tune (`--freeze-epochs N`): the head trains on
  the frozen backbone, then the network (or its last `--unfreeze` blocks) fine-tunes with a new
  optimizer at a lower learning rate.
- `TransferStrategy`: imgclf's default for a pretrained backbone (`--recipe transfer`): a head
  fitted exactly on cached features as epoch 0, then fine-tuning of the last blocks at a share of the
  head's learning rate, for as long as validation says it pays (see `imgclf.training.transfer`).

A new recipe is one more class here and one line in `create_strategy`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgclf.config import Config
from imgclf.data.imageset import ImageSet
from imgclf.data.prepared import PreparedData, crop_cache_spec
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import ConfigError
from imgclf.features.bottleneck import feature_loader
from imgclf.models.anatomy import backbone_digest, classifier_of
from imgclf.training.distributed import DistInfo
from imgclf.training.events import Callback, EarlyStopping, TrainState
from imgclf.training.finetune import FineTuneStages, set_trainable
from imgclf.training.loop import StepContext, compile_for_training, wrap_for_ranks
from imgclf.training.optim import Schedule, create_optimizer, scale_lr
from imgclf.training.transfer import (
    BACKBONE_LR_SHARE,
    FineTuneStop,
    HeadStage,
    ProgressiveResize,
    create_finetune_optimizer,
)

logger = logging.getLogger(__name__)

# --head-only without --dropout: half the cached features are dropped in each training step, as in
# the Keras tutorial's bottleneck head and fastai's default head. A linear head on fixed features
# overfits in 2–3 epochs otherwise (flowers5: 0.699 kept by validation loss, 0.736 with it).
HEAD_ONLY_DROPOUT = 0.5


@dataclass
class StageInputs:
    """What the stage hooks may need from the run: the network, the data, how batches become input,
    where the planned epochs are recorded, the callbacks of the loop."""

    model: nn.Module
    prepared: PreparedData
    ctx: StepContext
    val_name: str | None
    callbacks: list[Callback]
    record_plan: Callable[[int], None] | None
    steps_per_epoch: int
    lr: float
    global_batch: int


class Strategy:
    """A recipe's hooks; the base class trains every layer as configured (the plain recipe)."""

    # batches are the backbone's cached features, not images (no augmentation, no normalization)
    feature_batches = False

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def check(self, dist: DistInfo) -> None:
        """Refuse what this recipe cannot do on this hardware (one line, before any work)."""

    def train_cache_spec(self, spec: PreprocessSpec, train_set: ImageSet) -> PreprocessSpec | None:
        """The larger spec the training split is decoded at for random-resized crops, or None."""
        return crop_cache_spec(spec, self.cfg.augment, train_set)

    def channels_last(self) -> bool:
        """Whether the network runs in the channels-last memory format (all but the mlp, unless set)."""
        setting = self.cfg.train.channels_last
        return setting if setting is not None else self.cfg.model.name != "mlp"

    def train_size(self, spec: PreprocessSpec) -> tuple[int, int]:
        """The size augmented training batches come out at (validation always runs at the spec's)."""
        return spec.height, spec.width

    def set_trainable(self, model: nn.Module) -> list[nn.Module]:
        """Mark the layers that learn; returns the normalization layers kept in eval mode."""
        if self.cfg.train.finetune_bn == "frozen":
            return set_trainable(model, "all", frozen_bn=True)
        return []

    def trained_module(self, model: nn.Module) -> nn.Module:
        """What the optimizer steps and the loop calls: the network itself."""
        return model

    def loaders(
        self,
        loaders: Any,
        model: nn.Module,
        prepared: PreparedData,
        val_name: str,
        hardware: Any,
        callbacks: list[Callback],
    ) -> Any:
        """The batches training reads (`pipeline.Loaders`): the image loaders as built."""
        return loaders

    def create_optimizer(self, model: nn.Module, trained: nn.Module, lr: float, global_batch: int):
        return create_optimizer(trained, self.cfg.train, lr=lr)

    def create_schedule(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, lr: float, epochs: int | None
    ):
        """The learning-rate schedule over `epochs`, or None when they are planned later (transfer)."""
        if epochs is None:
            return None
        return Schedule(optimizer, self.cfg.train, steps_per_epoch, epochs=epochs, lr=lr)

    def stage_callbacks(self, inputs: StageInputs) -> list[Callback]:
        """Callbacks that change how the next epoch trains (run before the best model is kept)."""
        return []

    def stop_rules(self) -> list[Callback]:
        """Callbacks that decide when training stops (run after the best model is kept):
        --patience epochs without improvement."""
        patience = self.cfg.train.patience
        return [EarlyStopping(patience)] if patience is not None else []

    def resume(self, state: TrainState, epoch: int) -> None:
        """Put the run back in the stage it was in after `epoch` epochs, before its checkpoint loads."""

    def first_stage(self, inputs: StageInputs):
        """A step run before the first epoch (a callable on the TrainState), or None."""
        return None


class PlainStrategy(Strategy):
    """Every layer trains from the first epoch (a builtin CNN from scratch, or a full fine-tune)."""


class HeadOnlyStrategy(Strategy):
    """--head-only: only the classifier trains, on the backbone's features computed once per image."""

    feature_batches = True

    def check(self, dist: DistInfo) -> None:
        if dist.enabled:
            raise ConfigError("--head-only runs in one process; start it without torchrun or --devices")

    def train_cache_spec(self, spec: PreprocessSpec, train_set: ImageSet) -> PreprocessSpec | None:
        return None  # each image is seen once, at the model's size

    def set_trainable(self, model: nn.Module) -> list[nn.Module]:
        return set_trainable(model, None)

    def trained_module(self, model: nn.Module) -> nn.Module:
        # dropout on the cached features, as the network's own would drop them
        rate = HEAD_ONLY_DROPOUT if self.cfg.model.dropout is None else self.cfg.model.dropout
        classifier = classifier_of(model)
        return nn.Sequential(nn.Dropout(rate), classifier) if rate else classifier

    def loaders(self, loaders, model, prepared, val_name, hardware, callbacks):
        """The backbone's features of each split, computed once (and cached), as the batches."""
        model.eval()
        ctx = StepContext(device=hardware.device, spec=prepared.spec, channels_last=self.channels_last())
        backbone = backbone_digest(model)  # the weights themselves, wherever they came from
        cfg = self.cfg
        train = feature_loader(model, backbone, prepared, "train", ctx, cfg, callbacks, shuffle=True)
        val = None
        if loaders.val is not None:
            val = feature_loader(model, backbone, prepared, val_name, ctx, cfg, callbacks, shuffle=False)
        return dataclasses.replace(loaders, train=train, val=val)


class StagedStrategy(Strategy):
    """--freeze-epochs N: the head alone on the frozen backbone, then fine-tuning from epoch N."""

    def set_trainable(self, model: nn.Module) -> list[nn.Module]:
        return set_trainable(model, None)

    def create_schedule(self, optimizer, steps_per_epoch, lr, epochs):
        train = self.cfg.train
        return Schedule(optimizer, train, steps_per_epoch, epochs=train.freeze_epochs, lr=lr)

    def stage_callbacks(self, inputs: StageInputs) -> list[Callback]:
        train = self.cfg.train
        finetune_lr = scale_lr(
            train.finetune_lr or train.lr / 10, inputs.global_batch, train.lr_scaling, train.lr_base_batch
        )
        rebuild = RebuildForFineTuning(
            inputs.model, inputs.ctx, self.cfg, inputs.steps_per_epoch, finetune_lr
        )
        self.stages = FineTuneStages(
            train.freeze_epochs,
            train.unfreeze,
            inputs.ctx.frozen_norm,
            rebuild,
            frozen_bn=train.finetune_bn == "frozen",
        )
        return [self.stages]

    def resume(self, state: TrainState, epoch: int) -> None:
        """Resuming in stage 2: the optimizer state saved belongs to the fine-tuning stage."""
        if epoch >= self.cfg.train.freeze_epochs:
            self.stages.enter_stage_two(state)


class TransferStrategy(Strategy):
    """The head fitted on cached features (epoch 0), then the last blocks fine-tuned from it while
    validation says it pays (with --finetune-size, at a lower resolution but for the last epoch)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.planned = cfg.train.epochs is None  # imgclf plans the epochs: it also decides when to stop

    def check(self, dist: DistInfo) -> None:
        if dist.enabled:
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

    def create_optimizer(self, model, trained, lr, global_batch):
        train = self.cfg.train
        backbone_lr = scale_lr(
            train.finetune_lr or lr * BACKBONE_LR_SHARE, global_batch, "none", train.lr_base_batch
        )
        return create_finetune_optimizer(model, lr, backbone_lr, train.weight_decay)

    def stage_callbacks(self, inputs: StageInputs) -> list[Callback]:
        augment = inputs.ctx.augment
        if augment is None or augment.size == self._full_size(inputs):
            return []
        return [ProgressiveResize(augment, self._full_size(inputs))]

    def stop_rules(self) -> list[Callback]:
        """--patience when given; else, with epochs imgclf planned, stop once fine-tuning no longer pays."""
        if self.cfg.train.patience is None and self.planned:
            return [FineTuneStop()]
        return super().stop_rules()

    def first_stage(self, inputs: StageInputs):
        return HeadStage(
            model=inputs.model,
            prepared=inputs.prepared,
            ctx=StepContext(
                device=inputs.ctx.device,
                spec=inputs.prepared.spec,
                channels_last=inputs.ctx.channels_last,
                autocast_dtype=inputs.ctx.autocast_dtype,
                frozen_norm=inputs.ctx.frozen_norm,
            ),
            cfg=self.cfg,
            val_name=inputs.val_name,
            callbacks=inputs.callbacks,
            record_plan=inputs.record_plan,
            steps_per_epoch=inputs.steps_per_epoch,
            lr=inputs.lr,
            train_size=inputs.ctx.augment.size if inputs.ctx.augment is not None else None,
        )

    @staticmethod
    def _full_size(inputs: StageInputs) -> tuple[int, int]:
        return inputs.prepared.spec.height, inputs.prepared.spec.width


def create_strategy(cfg: Config) -> Strategy:
    """The strategy of a resolved config (`imgclf.training.recipe.resolve_recipe` has run)."""
    train = cfg.train
    if train.recipe == "transfer":
        return TransferStrategy(cfg)
    if train.head_only:
        return HeadOnlyStrategy(cfg)
    if train.freeze_epochs:
        return StagedStrategy(cfg)
    return PlainStrategy(cfg)


class RebuildForFineTuning:
    """--freeze-epochs: when the backbone unfreezes, a new optimizer and schedule for the fine-tuning
    epochs at the fine-tuning learning rate (the network rewrapped to see its newly trainable weights)."""

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
