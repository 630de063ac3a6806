"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class ImgclfError(Exception):
    """Base of every error caused by input, configuration or environment rather than by a bug."""

    exit_code = 1


class UsageError(ImgclfError):
    """A command was called wrongly: a missing path, a bad flag value."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration (YAML file or flags) is invalid."""


class DataError(ImgclfError):
    """The data cannot be used: no images, an empty class, an unreadable CSV."""


class ModelError(ImgclfError):
    """A model cannot be built or loaded."""
