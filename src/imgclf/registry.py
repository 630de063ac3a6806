"""Registries: where a kind of thing grows (recipes, export formats, data sources, training loggers),
each entry is one module of one package, found by its file name.

    imgclf/training/recipes/head_only.py   → the recipe "head-only"
    imgclf/export/formats/ort.py           → the export format "ort"

Listing the entries reads the package's folder and each module's docstring without importing the
modules, so `--help` names them without loading torch; an entry's module is imported when it is
used. A module whose name starts with "_" is not an entry. An entry is added by adding its file;
a folder appended to the package's `__path__` adds the entries in it (how the tests prove that one
file is enough).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from imgclf.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One entry: its name ("head-only"), its module ("imgclf.training.recipes.head_only"), the first
    line of the module's docstring (what --help says about it), and the module's top-level constants
    whose names are in capitals and whose values are literals (`SUFFIX = ".ort"`), read from its
    file: what a lower layer may know of an entry without importing it (a model file's suffix)."""

    name: str
    module: str
    summary: str
    declared: dict[str, Any] = field(default_factory=dict, compare=False)


class Registry:
    """The entries of one package (`package`), named for messages as `kind` ("recipe")."""

    def __init__(self, package: str, kind: str, *, first: tuple[str, ...] = ()) -> None:
        self.package, self.kind, self.first = package, kind, first

    def entries(self) -> dict[str, Entry]:
        """Every entry by name, those named in `first` first, then in alphabetical order."""
        found: dict[str, Entry] = {}
        for info in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
            if info.name.startswith("_"):
                continue
            name = info.name.replace("_", "-")
            path = Path(getattr(info.module_finder, "path", "")) / f"{info.name}.py"
            summary, declared = _read(path)
            found.setdefault(name, Entry(name, f"{self.package}.{info.name}", summary, declared))
        order = [name for name in self.first if name in found] + sorted(set(found) - set(self.first))
        return {name: found[name] for name in order}

    def names(self) -> list[str]:
        return list(self.entries())

    def entry(self, name: str) -> Entry:
        """The entry `name`; a ConfigError naming the entries there are if there is none."""
        found = self.entries().get(str(name).replace("_", "-"))
        if found is None:
            raise ConfigError(f"unknown {self.kind} {name!r}: one of {', '.join(self.names())}")
        return found

    def load(self, name: str) -> ModuleType:
        """The module of entry `name`; a ConfigError naming the entries there are if there is none."""
        return importlib.import_module(self.entry(name).module)

    def describe(self) -> str:
        """The entries as --help lists them: "plain (…) | transfer (…)"."""
        return " | ".join(
            f"{entry.name} ({entry.summary})" if entry.summary else entry.name
            for entry in self.entries().values()
        )


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    """The first paragraph of a module's docstring and its literal constants, read without importing
    it (nothing for a file that cannot be read or parsed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return "", {}
    docstring = ast.get_docstring(tree) or ""
    summary = docstring.strip().split("\n\n")[0].replace("\n", " ").rstrip(".")
    declared: dict[str, Any] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id.isupper() and node.value is not None:
            with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                declared[target.id] = ast.literal_eval(node.value)
    return summary, declared


# Where imgclf grows: each registry is a package whose modules are its entries. Declared here, at
# the bottom of the layers, so that any layer (the command line's --help, Predictor's suffixes) can
# list them without importing them.
RECIPES = Registry("imgclf.training.recipes", "recipe", first=("plain", "transfer", "head-only", "staged"))
LOGGERS = Registry("imgclf.training.loggers", "logger", first=("csv",))
EXPORT_FORMATS = Registry("imgclf.export.formats", "export format", first=("onnx", "ort", "tflite"))
DATA_SOURCES = Registry("imgclf.data.sources", "data source")
MODEL_FAMILIES = Registry("imgclf.models.families", "model family")
