"""The training recipes, one module each, found by file name (`head_only.py` is `--recipe head-only`).

A recipe module declares `STRATEGY`, a subclass of `imgclf.training.strategy.Strategy` whose hooks say
which layers learn, how and in what stages, and `DEFAULTS`, the `RecipeDefaults` it gives the
settings a user left unset. Its docstring's first line is what `imgclf train --help` says about it.
Adding a recipe is adding its file; `--recipe auto` is resolved in `imgclf.training.recipe`.
"""

from imgclf.registry import RECIPES

__all__ = ["RECIPES"]
