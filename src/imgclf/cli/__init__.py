"""The `imgclf` command: one module per command or small group, each a thin function that parses
its flags, calls one `imgclf.api` entry point and prints.

- `app`: the application, its global options (--debug, --verbose, --version) and error handling
- `options`: the flags generated from `imgclf.config`'s fields (all of them for `train`; the data
  source, device, batch size and workers for the commands that share them)
- `train`; `predict` (predict, explain); `evaluate` (evaluate, calibrate, report); `export`; `serve`;
  `data` (check, show, features, augment-preview, cache); `models`; `demo`

A new command is a function marked `@command(name, rank)` in a module here (a new module is found
by itself), over its `api` entry point.
"""

import importlib
import pkgutil

from imgclf.cli.app import app, main, register_commands

for _module in pkgutil.iter_modules(__path__):  # each command module registers its commands
    if _module.name not in ("app", "options"):
        importlib.import_module(f"{__name__}.{_module.name}")
COMMANDS = register_commands()

__all__ = ["COMMANDS", "app", "main"]
