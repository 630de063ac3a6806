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
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from imgclf.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One entry: its name ("head-only"), its module ("imgclf.training.recipes.head_only"), and the
    first line of the module's docstring (what --help says about it)."""

    name: str
    module: str
    summary: str


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
            found.setdefault(name, Entry(name, f"{self.package}.{info.name}", _summary(path)))
        order = [name for name in self.first if name in found] + sorted(set(found) - set(self.first))
        return {name: found[name] for name in order}

    def names(self) -> list[str]:
        return list(self.entries())

    def load(self, name: str) -> ModuleType:
        """The module of entry `name`; a ConfigError naming the entries there are if there is none."""
        entry = self.entries().get(str(name).replace("_", "-"))
        if entry is None:
            raise ConfigError(f"unknown {self.kind} {name!r}: one of {', '.join(self.names())}")
        return importlib.import_module(entry.module)

    def describe(self) -> str:
        """The entries as --help lists them: "plain (…) | transfer (…)"."""
        return " | ".join(
            f"{entry.name} ({entry.summary})" if entry.summary else entry.name
            for entry in self.entries().values()
        )


def _summary(path: Path) -> str:
    """The first line of a module's docstring, read without importing it ("" if there is none)."""
    try:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    return docstring.strip().split("\n\n")[0].replace("\n", " ").rstrip(".")
