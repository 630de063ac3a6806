"""The CLI package: every command's options are in the README's table, the options several
commands share are generated from one config field each, and no command module reaches past
`imgclf.api` into the layers that do the work."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer

from conftest import REPO_ROOT
from imgclf.cli import COMMANDS, app
from imgclf.config import settings

GROUP = typer.main.get_command(app)
CLI_DIR = REPO_ROOT / "src" / "imgclf" / "cli"


def _options(name: str) -> dict[str, object]:
    """Each option's long flags (`--a/--no-a` for a switch) → its click parameter."""
    found = {}
    for param in GROUP.commands[name].params:
        if param.param_type_name == "option" and param.name != "help":
            longs = [o for o in [*param.opts, *param.secondary_opts] if o.startswith("--")]
            found["/".join(longs)] = param
    return found


def test_the_readme_lists_every_commands_options() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| command | options |") :].split("\n\n", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `imgclf ([a-z-]+)` \| (.*) \|$", table, re.M)}
    assert set(rows) == {name for name, _ in COMMANDS}
    for name, _ in COMMANDS:
        if name == "train":  # its settings have their own table (test_cli)
            continue
        assert set(re.findall(r"`(--[^`]+)`", rows[name])) == set(_options(name)), name


SHARED_KEYS = ["data.path_col", "data.label_col", "data.images", "data.multi_label", "data.splits",
               "data.workers", "train.batch_size", "train.device"]  # fmt: skip


@pytest.mark.parametrize("key", SHARED_KEYS)
def test_a_shared_option_is_the_config_fields_on_every_command(key: str) -> None:
    item = next(item for item in settings() if item.key == key)
    flags = f"{item.flag}/{item.negative}" if item.negative else item.flag  # --multi-label/--single-label
    having = [name for name, _ in COMMANDS if flags in _options(name)]
    assert len(having) >= 2, having  # shared indeed
    for name in having:
        if getattr(_options(name)[flags], "hidden", False):
            continue  # another option's old name (augment-preview --images is its --rows)
        if name == "export" and key == "train.batch_size":
            continue  # the fixed batch of --fixed-batch: export's own option
        param = _options(name)[flags]
        assert param.help.startswith(item.help), (name, param.help)
        assert param.opts == [item.flag, *([item.short] if item.short else [])], name
        if key == "train.device":
            assert "[default: auto]" in param.help, name  # every command with --device: auto


def test_commands_call_the_api_not_the_layers_below() -> None:
    allowed = ("imgclf.api", "imgclf.cli", "imgclf.config", "imgclf.console", "imgclf.errors",
               "imgclf.demo", "imgclf.preview", "imgclf.paths", "imgclf.version", "imgclf.serve",
               "imgclf.inference.unknown", "imgclf.registry")  # fmt: skip
    for path in sorted(CLI_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf"):
                if node.module == "imgclf" and all(alias.name == "api" for alias in node.names):
                    continue
                assert node.module.startswith(allowed), f"{path.name} imports {node.module}"


def test_each_command_is_thin() -> None:
    """A command's body (after its options and docstring) parses, calls and prints: a few lines."""
    for path in sorted(CLI_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
                body = node.body[1:]
                if body:
                    assert node.end_lineno - body[0].lineno < 45, f"{path.name}:{node.name}"
    assert max(len(p.read_text().splitlines()) for p in CLI_DIR.glob("*.py")) < 400
    assert Path(REPO_ROOT / "src" / "imgclf" / "cli.py").exists() is False


def test_the_readme_tables_list_the_registries() -> None:
    """The recipe and export-format tables of the README name exactly the registries' entries."""
    from imgclf.registry import EXPORT_FORMATS, RECIPES

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for header, registry in (("| recipe | what trains", RECIPES), ("| format | file |", EXPORT_FORMATS)):
        table = readme[readme.index(header) :].split("\n\n", 1)[0]
        named = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
        assert named == registry.names(), header
