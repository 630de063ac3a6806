"""Only the classifier trains, on the backbone's features computed once per image (--head-only).

The tutorials' bottleneck route: the backbone runs once per image, its features are cached, and
the classifier trains on them for --epochs (seconds per epoch) with dropout on the features; the
whole network is saved.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from imgclf.config import Config
from imgclf.data.imageset import ImageSet
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import ConfigError
from imgclf.features.bottleneck import feature_loader
from imgclf.models.anatomy import backbone_digest, classifier_of
from imgclf.training.finetune import set_trainable
from imgclf.training.loop import StepContext
from imgclf.training.recipes.plain import DEFAULTS as PLAIN
from imgclf.training.strategy import Strategy

if TYPE_CHECKING:
    from imgclf.training.trainer import Loaders, Trainer

# without --dropout, half the cached features are dropped in each training step, as in the Keras
# tutorial's bottleneck head and fastai's default head: a linear head on fixed features overfits in
# 2–3 epochs otherwise (the README's "Why these defaults" gives the measurement)
HEAD_ONLY_DROPOUT = 0.5


class HeadOnlyStrategy(Strategy):
    """Only the classifier trains, on the backbone's features computed once per image."""

    feature_batches = True

    @classmethod
    def resolve(cls, cfg: Config) -> list[str]:
        cfg.train.head_only = True  # what configs written before the recipes had names read
        return []

    def check(self, trainer: Trainer) -> None:
        if trainer.hardware.dist.enabled:
            raise ConfigError(
                "--recipe head-only runs in one process; start it without torchrun or --devices"
            )

    def train_cache_spec(self, spec: PreprocessSpec, train_set: ImageSet) -> PreprocessSpec | None:
        return None  # each image is seen once, at the model's size

    def set_trainable(self, model: nn.Module) -> list[nn.Module]:
        return set_trainable(model, None)

    def trained_module(self, model: nn.Module) -> nn.Module:
        # dropout on the cached features, as the network's own would drop them
        rate = HEAD_ONLY_DROPOUT if self.cfg.model.dropout is None else self.cfg.model.dropout
        classifier = classifier_of(model)
        return nn.Sequential(nn.Dropout(rate), classifier) if rate else classifier

    def loaders(self, trainer: Trainer) -> Loaders:
        """The backbone's features of each split, computed once (and cached), as the batches."""
        model, prepared, loaders = trainer.network.model, trainer.prepared, trainer.loaders
        model.eval()
        ctx = StepContext(
            device=trainer.hardware.device, spec=prepared.spec, channels_last=self.channels_last()
        )
        backbone = backbone_digest(model)  # the weights themselves, wherever they came from
        cfg, callbacks = self.cfg, trainer.callbacks
        train = feature_loader(model, backbone, prepared, "train", ctx, cfg, callbacks, shuffle=True)
        val = None
        if loaders.val is not None:
            val_name = trainer.data.val_name
            val = feature_loader(model, backbone, prepared, val_name, ctx, cfg, callbacks, shuffle=False)
        return dataclasses.replace(loaders, train=train, val=val)


STRATEGY = HeadOnlyStrategy
DEFAULTS = PLAIN
