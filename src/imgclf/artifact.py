"""The model artifact: a folder with `model.safetensors` (weights) and `imgclf.json` (everything else).

`imgclf.json` holds the format version, the architecture and its arguments, the ordered class names
and display names, the preprocessing spec, a training summary with final metrics, and a dataset
fingerprint. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import ModelError, UsageError
from imgclf.io import recover_dir, replace_dir_atomic, write_text_atomic

logger = logging.getLogger(__name__)

FORMAT = "imgclf-model"
FORMAT_VERSION = 2  # 2: multi-label models (sigmoid outputs, per-label thresholds); 1 otherwise
WEIGHTS_FILE = "model.safetensors"
META_FILE = "imgclf.json"


@dataclass
class ModelInfo:
    """Everything in imgclf.json besides the weights."""

    architecture: dict[str, Any]
    classes: list[str]
    preprocessing: PreprocessSpec
    display_names: list[str] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)  # temperature scaling (see Predictor)
    # several labels per image: independent sigmoid outputs, each answered at its own threshold
    # (chosen on validation; `imgclf.evaluation.multi_label`)
    multi_label: bool = False
    thresholds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from imgclf.version import __version__

        return {
            "format": FORMAT,
            # a single-label model stays readable by imgclf versions that know format 1 only; a
            # multi-label one is refused by them rather than read as a softmax classifier
            "format_version": FORMAT_VERSION if self.multi_label else 1,
            "imgclf_version": __version__,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "architecture": self.architecture,
            "classes": self.classes,
            "display_names": self.display_names or list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "training": self.training,
            "metrics": self.metrics,
            "dataset": self.dataset,
            **({"calibration": self.calibration} if self.calibration else {}),
            **({"task": "multi-label", "thresholds": self.thresholds} if self.multi_label else {}),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelInfo:
        if values.get("format") != FORMAT:
            raise ModelError("not an imgclf model (imgclf.json has no imgclf format marker)")
        if int(values.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelError(
                f"the model was saved in format {values['format_version']}, newer than this imgclf "
                f"understands ({FORMAT_VERSION}); upgrade imgclf"
            )
        try:
            return cls(
                architecture=values["architecture"],
                classes=list(values["classes"]),
                preprocessing=PreprocessSpec.from_dict(values["preprocessing"]),
                display_names=values.get("display_names"),
                training=values.get("training", {}),
                metrics=values.get("metrics", {}),
                calibration=values.get("calibration", {}),
                dataset=values.get("dataset", {}),
                created=values.get("created", ""),
                multi_label=values.get("task") == "multi-label",
                thresholds=[float(t) for t in values.get("thresholds", [])],
            )
        except KeyError as error:
            raise ModelError(f"imgclf.json lacks {error.args[0]!r}") from error


def _state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing memory; clone makes each entry its own contiguous tensor.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_artifact(path: str | Path, model: nn.Module, info: ModelInfo) -> Path:
    """Write the artifact folder atomically (readers never see half of it)."""
    path = Path(path)
    state = _state_dict_for_saving(model)

    def fill(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
        (folder / META_FILE).write_text(json.dumps(info.to_dict(), indent=2), encoding="utf-8")

    replace_dir_atomic(path, fill)
    return path


def update_artifact_info(path: str | Path, info: ModelInfo) -> None:
    """Rewrite imgclf.json only (the weights are unchanged)."""
    write_text_atomic(Path(path) / META_FILE, json.dumps(info.to_dict(), indent=2))


def resolve_artifact_path(path: str | Path) -> Path:
    """Accept the artifact folder, a run folder (→ its model/), or the imgclf.json file."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    recover_dir(path)  # a model folder whose replacement was interrupted between its two renames
    recover_dir(path / "model")
    if (path / "model" / META_FILE).is_file():
        path = path / "model"
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    if not (path / META_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise UsageError(f"{path} is not an imgclf model folder (needs {WEIGHTS_FILE} and {META_FILE})")
    return path


def load_model_info(path: str | Path) -> ModelInfo:
    path = resolve_artifact_path(path)
    try:
        values = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{path / META_FILE} is not valid JSON: {error}") from error
    return ModelInfo.from_dict(values)


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Rebuild the network from imgclf.json and load its weights (safetensors, no pickle)."""
    from imgclf.models import create_model

    path = resolve_artifact_path(path)
    info = load_model_info(path)
    model = create_model(info.architecture)
    try:
        state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelError(f"cannot read {path / WEIGHTS_FILE}: {error}") from error
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{path / WEIGHTS_FILE} does not fit its architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    model.to(device).eval()
    return model, info
