"""What `imgclf train` does when the user says nothing: the model, the recipe and their settings,
chosen from the data and the hardware. Every choice is said in one line, and every flag the user
gives wins over it.

- `--model auto`: photos, and any few thousand images, get the offline pretrained backbone
  (EfficientNet-Lite0, ImageNet weights); many small images such as digits get the builtin `cnn`,
  trained from scratch.
- `--recipe auto`: a pretrained backbone gets the transfer recipe (a head fitted on cached features,
  then, where the head leaves mistakes to fix, the last blocks fine-tuned from it at a lower learning
  rate while validation says it pays, the best epoch kept by validation accuracy; see
  `imgclf.training.recipes.transfer` and `imgclf.training.transfer`); anything else trains as
  configured (`plain`). `--head-only` and `--freeze-epochs N` are the head-only and staged recipes.
  The recipe is resolved here alone (`choose_recipe`); each recipe is one module of
  `imgclf.training.recipes`.
- Settings left unset (None) take the recipe's values. `resolve_recipe` returns a new frozen config
  with every choice filled in; `config.yaml` records it, so that `--resume` and `--config` repeat
  the run exactly.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from imgclf.config import Config, complete_config, thaw_config
from imgclf.data.imageset import ImageSet
from imgclf.errors import ConfigError
from imgclf.training.recipes.plain import DEFAULTS as PLAIN
from imgclf.training.strategy import RecipeDefaults, recipe_defaults, recipe_name, recipe_strategy

logger = logging.getLogger(__name__)

PRETRAINED_BACKBONE = "efficientnet_lite0"
# Many small images (digits, glyphs, thumbnails: median side up to SMALL_SIDE px, at least
# SCRATCH_MIN_IMAGES of them) train a CNN from scratch: it learns them well in minutes, where an
# ImageNet backbone would see each upscaled 4-8× at 30× the cost. Fewer images learn more from the
# backbone's features, whatever their size (the README's "Why these defaults" gives the measurements).
SMALL_SIDE = 64
SCRATCH_MIN_IMAGES = 10_000
SCRATCH_MODEL = "cnn"
# an unset time limit on the CPU (the transfer recipe): 3 minutes per 2,000 images, at least 3
CPU_MINUTES_PER_IMAGE = 3 / 2000
CPU_MIN_MINUTES = 3.0
# a builtin CNN chosen by --model auto for many small grey images: the plain recipe with augmentation
# that suits digits (shifts, zoom, rotation; no mirror images)
SCRATCH = replace(PLAIN, preset="digits")
# the same for small colour images (objects, animals, vehicles at 32 px): mirror images are still
# the same class, so the `light` preset (shifts, zoom, rotation and horizontal flips)
SCRATCH_COLOUR = replace(SCRATCH, preset="light")


def choose_time_limit(cfg: Config, count: int, device_type: str) -> str | None:
    """Resolve an unset time limit: on the CPU, the transfer recipe plans its fine-tuning to end within
    CPU_MINUTES_PER_IMAGE per image (at least CPU_MIN_MINUTES); elsewhere, and for the other recipes,
    there is none (0)."""
    train = cfg.train
    if train.time_limit is not None:
        return None
    if train.recipe != "transfer" or train.epochs is not None or device_type != "cpu":
        train.time_limit = 0.0
        return None
    minutes = round(max(CPU_MIN_MINUTES, count * CPU_MINUTES_PER_IMAGE), 1)
    train.time_limit = minutes
    return (
        f"time limit {minutes:g} min on the CPU ({CPU_MINUTES_PER_IMAGE * 2000:g} min per 2,000 images): "
        "fine-tuning plans its epochs to end within it; --time-limit MIN sets another, 0 none"
    )


def describe_images(image_set: ImageSet) -> tuple[float, int]:
    """(share of grey images, median short side in pixels) from the headers."""
    headers = image_set.headers or []
    if not headers:
        return 0.0, 224
    grey = sum(1 for header in headers if header.grayscale) / len(headers)
    side = int(np.median([min(header.width, header.height) for header in headers]))
    return grey, side


def choose_model(cfg: Config, image_set: ImageSet) -> str | None:
    """Resolve `--model auto`; returns the line that says what was chosen and why (None if nothing was)."""
    if cfg.model.name != "auto":
        return None
    grey, side = describe_images(image_set)
    if cfg.model.pretrained or cfg.model.weights or recipe_name(cfg.train) in ("head-only", "staged"):
        cfg.model.name, cfg.model.pretrained = PRETRAINED_BACKBONE, not cfg.model.weights
        return (
            f"model {PRETRAINED_BACKBONE} (pretrained weights were asked for; "
            "--model NAME chooses another backbone)"
        )
    count = len(image_set)
    if side <= SMALL_SIDE and count >= SCRATCH_MIN_IMAGES:
        cfg.model.name = SCRATCH_MODEL
        return (
            f"model {SCRATCH_MODEL}, from scratch: {count:,} small images (median side {side} px) such "
            f"as digits; --model {PRETRAINED_BACKBONE} --pretrained for the ImageNet backbone"
        )
    cfg.model.name, cfg.model.pretrained = PRETRAINED_BACKBONE, True
    if side > SMALL_SIDE:
        kind = f"{'grey' if grey >= 0.5 else 'colour'} photos (median side {side} px)"
    else:
        kind = f"{count:,} small images (under {SCRATCH_MIN_IMAGES:,}, too few to learn from scratch)"
    return (
        f"model {PRETRAINED_BACKBONE} with ImageNet weights (offline): {kind} learn best from a pretrained "
        "backbone; --model cnn trains one from scratch"
    )


def choose_recipe(
    cfg: Config, model_line: str | None, distributed: bool = False, grey: float = 1.0
) -> tuple[RecipeDefaults, list[str]]:
    """Resolve the recipe, in this one place: `--recipe auto` (transfer for a pretrained backbone in
    one process, else plain), the aliases --head-only (head-only) and --freeze-epochs N (staged), then
    the recipe's own settings (`Strategy.resolve`). Returns the settings it gives those left unset,
    and the lines that say what was guessed. `grey` is the share of grey images, which chooses the
    scratch CNN's augmentation."""
    train = cfg.train
    pretrained = bool(cfg.model.pretrained or cfg.model.weights)
    name = recipe_name(train)
    lines = []
    if name == "auto":
        name = "transfer" if pretrained and not distributed else "plain"
        if name == "transfer":
            lines.append(
                "recipe transfer: a head fitted on cached features, then the last blocks fine-tuned from "
                "it while validation says it pays, the best epoch kept (--recipe plain trains as configured)"
            )
    train.recipe = name
    if train.epochs == 0 and name != "transfer":  # allowed before the recipe was known
        raise ConfigError(
            f"--epochs 0 keeps the transfer recipe's head alone, but this run trains with recipe {name}"
            f"{' (no pretrained backbone)' if not pretrained else ''}: give --epochs 1 or more"
        )
    strategy = recipe_strategy(name)
    lines += strategy.resolve(cfg)
    defaults = recipe_defaults(name)
    if name == "plain" and model_line is not None and cfg.model.name == SCRATCH_MODEL:
        defaults = SCRATCH if grey >= 0.5 else SCRATCH_COLOUR
        if cfg.augment.preset == "auto":
            why = (
                "grey small images: shifts, zoom and rotation, never mirrored, as a mirrored glyph is another"
                if defaults is SCRATCH
                else "small colour images: shifts, zoom, rotation and mirror images"
            )
            lines.append(
                f"recipe plain with the {defaults.preset} augmentation for {why} (--augment sets another)"
            )
    return defaults, lines


def choose_multi_label(cfg: Config, image_set: ImageSet) -> str:
    """A multi-label set trains one sigmoid output per label with binary cross-entropy, its best
    epoch chosen by validation mAP and no label smoothing (the per-label thresholds chosen on
    validation at the end play its part); recorded in the config so that --resume repeats it."""
    train = cfg.train
    cfg.data.multi_label = True
    if train.monitor is None:
        train.monitor = "val_map"
    if train.label_smoothing is None:
        train.label_smoothing = 0.0
    weights = "positive weights for rare labels" if train.class_weight == "auto" else "unweighted"
    return (
        f"{image_set.label_summary}: one sigmoid output per label, binary cross-entropy ({weights}), "
        f"the best epoch by {train.monitor}, a threshold per label chosen on validation "
        "(--single-label reads each label value as one class)"
    )


def resolve_recipe(
    cfg: Config, image_set: ImageSet, device_type: str = "cpu", distributed: bool = False
) -> tuple[Config, list[str]]:
    """The last step of resolution: every setting the user left to imgclf (model, recipe, unset
    training settings, the time limit) chosen from the data and the hardware. Returns the new frozen
    config and the lines that say what was guessed; a resolved config comes back the same."""
    cfg = thaw_config(cfg)
    lines = []
    model_line = choose_model(cfg, image_set)
    if model_line:
        lines.append(model_line)
    defaults, recipe_lines = choose_recipe(cfg, model_line, distributed, describe_images(image_set)[0])
    lines += recipe_lines
    time_line = choose_time_limit(cfg, len(image_set), device_type)
    if time_line:
        lines.append(time_line)
    train = cfg.train
    if image_set.multi_label:
        lines.append(choose_multi_label(cfg, image_set))
    elif train.monitor == "val_map":
        raise ConfigError("--monitor val_map ranks multi-label models; this data has one label per image")
    if train.lr is None:
        train.lr = defaults.lr
    if train.label_smoothing is None:
        train.label_smoothing = defaults.label_smoothing
    if train.warmup_epochs is None:
        train.warmup_epochs = defaults.warmup_epochs
    if train.monitor is None:
        train.monitor = defaults.monitor
    if train.finetune_bn is None:
        train.finetune_bn = defaults.finetune_bn if (cfg.model.pretrained or cfg.model.weights) else "train"
    if train.unfreeze is None:
        train.unfreeze = defaults.unfreeze
    if train.finetune_size is None:  # off by default: the README's "Why these defaults" says why
        train.finetune_size = 0
    if train.batch_size is None:
        train.batch_size = defaults.batch_size
    if train.epochs is None and defaults.epochs is not None:
        train.epochs = defaults.epochs
    if cfg.augment.preset == "auto":
        cfg.augment.preset = defaults.preset
    return complete_config(cfg), lines
