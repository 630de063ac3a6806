"""A recipe's hooks over the `Trainer`: which layers learn, how they learn and in what stages.
`Trainer.run` calls them in order and holds no recipe of its own:

    check → train_cache_spec → set_trainable → trained_module → loaders → create_optimizer →
    create_schedule → stage_callbacks → stop_rules → first_stage (→ resume)

`Strategy` is the plain recipe (every layer trains as configured). Each recipe is one module of
`imgclf.training.recipes` (found by its file name, `RECIPES`), declaring `STRATEGY` (a subclass) and
`DEFAULTS` (the settings it gives those the user left unset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from imgclf.config import Config, TrainConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.prepared import crop_cache_spec
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import ConfigError
from imgclf.training.events import Callback, EarlyStopping, TrainState
from imgclf.training.finetune import set_trainable
from imgclf.training.loggers import check_loggers
from imgclf.training.optim import Schedule, create_optimizer
from imgclf.training.recipes import RECIPES

if TYPE_CHECKING:
    from imgclf.training.trainer import Loaders, Trainer


@dataclass(frozen=True)
class RecipeDefaults:
    """The settings a recipe gives those the user left unset."""

    lr: float
    label_smoothing: float
    warmup_epochs: float
    monitor: str
    finetune_bn: str
    preset: str
    epochs: int | None  # None: planned from the data and the time limit (transfer)
    batch_size: int
    unfreeze: str = "all"


class Strategy:
    """A recipe's hooks; the base class trains every layer as configured (the plain recipe)."""

    # batches are the backbone's cached features, not images (no augmentation, no normalization)
    feature_batches = False

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @classmethod
    def resolve(cls, cfg: Config) -> list[str]:
        """Fill the settings this recipe decides (on a config being resolved); the lines say what."""
        return []

    def check(self, trainer: Trainer) -> None:
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

    def loaders(self, trainer: Trainer) -> Loaders:
        """The batches training reads: the image loaders as built."""
        return trainer.loaders

    def create_optimizer(self, trainer: Trainer, lr: float) -> torch.optim.Optimizer:
        return create_optimizer(trainer.network.trained, self.cfg.train, lr=lr)

    def create_schedule(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, lr: float, epochs: int | None
    ) -> Schedule | None:
        """The learning-rate schedule over `epochs`, or None when they are planned later (transfer)."""
        if epochs is None:
            return None
        return Schedule(optimizer, self.cfg.train, steps_per_epoch, epochs=epochs, lr=lr)

    def stage_callbacks(self, trainer: Trainer) -> list[Callback]:
        """Callbacks that change how the next epoch trains (run before the best model is kept)."""
        return []

    def stop_rules(self) -> list[Callback]:
        """Callbacks that decide when training stops (run after the best model is kept):
        --patience epochs without improvement."""
        patience = self.cfg.train.patience
        return [EarlyStopping(patience)] if patience is not None else []

    def resume(self, state: TrainState, epoch: int) -> None:
        """Put the run back in the stage it was in after `epoch` epochs, before its checkpoint loads."""

    def first_stage(self, trainer: Trainer) -> Callable[[TrainState], None] | None:
        """A step run before the first epoch (a callable on the TrainState), or None."""
        return None


def recipe_name(train: TrainConfig) -> str:
    """The recipe a config names, its aliases read: --head-only is the head-only recipe and
    --freeze-epochs N the staged one (where the recipe is auto, or plain as configs written before
    the recipes had names say); "auto" until `imgclf.training.recipe.resolve_recipe` has chosen."""
    name = str(train.recipe).replace("_", "-")
    if name in ("auto", "plain") and train.head_only:
        return "head-only"
    if name in ("auto", "plain") and train.freeze_epochs:
        return "staged"
    return name


def check_recipe(train: TrainConfig) -> None:
    """A ConfigError, before any work, when the config names a recipe or logger there is none of."""
    name = recipe_name(train)
    if name != "auto":
        recipe_strategy(name)
    check_loggers(train)


def recipe_strategy(name: str) -> type[Strategy]:
    """The strategy class of the recipe `name` (ConfigError naming the recipes if there is none)."""
    return RECIPES.load(name).STRATEGY


def recipe_defaults(name: str) -> RecipeDefaults:
    return RECIPES.load(name).DEFAULTS


def create_strategy(cfg: Config) -> Strategy:
    """The strategy of a config's recipe (`resolve_recipe` has chosen it where it said auto)."""
    name = recipe_name(cfg.train)
    if name == "auto":
        raise ConfigError("the recipe is chosen from the data: resolve the config first (resolve_recipe)")
    return recipe_strategy(name)(cfg)
