"""Every layer trains from the first epoch, as configured (a CNN from scratch, or a full fine-tune).

The defaults are imgclf's recipe for training as configured: AdamW at 2e-3 with a one-epoch warm-up
then cosine decay, 10 epochs, the best epoch kept by validation loss.
"""

from __future__ import annotations

from imgclf.training.strategy import RecipeDefaults, Strategy


class PlainStrategy(Strategy):
    """Every layer trains from the first epoch (a builtin CNN from scratch, or a full fine-tune)."""


STRATEGY = PlainStrategy
DEFAULTS = RecipeDefaults(
    lr=2e-3,
    label_smoothing=0.0,
    warmup_epochs=1.0,
    monitor="val_loss",
    finetune_bn="train",
    preset="none",
    epochs=10,
    batch_size=64,
)
