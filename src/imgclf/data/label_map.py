"""Display names for the classes, from a JSON file (keys: class names or 1-based indices)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from imgclf.errors import UsageError


def load_label_map(path: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """Display names from a JSON file whose keys are class names or 1-based class indices."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"label map not found: {path}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(mapping, dict):
        raise UsageError(f"{path} must be a JSON object {{class: display name}}")
    mapping = {str(k): str(v) for k, v in mapping.items()}
    if any(name in mapping for name in classes):
        return {name: mapping.get(name, name) for name in classes}
    if all(k.isdigit() for k in mapping):
        return {name: mapping.get(str(i + 1), name) for i, name in enumerate(classes)}
    raise UsageError(f"{path}: its keys match neither the class names nor 1-based class indices")
