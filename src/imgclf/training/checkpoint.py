"""The resume checkpoint (`last.pt`): model, optimizer, schedule, epoch, history and RNG state.

Written atomically after every epoch; loaded with `weights_only=True` (tensors and plain containers
only, nothing is unpickled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgclf.errors import UsageError
from imgclf.io import write_atomic
from imgclf.training.events import Callback, TrainState

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: TrainState) -> None:
    payload: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "epoch": state.epoch,
        "history": state.history,
        "best_value": state.best_value,
        "best_epoch": state.best_epoch,
        "epochs_without_improvement": state.epochs_without_improvement,
        "stop": state.stop,
        "stop_reason": state.stop_reason,
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from: {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file raises pickle/zip errors of several kinds
        raise UsageError(f"cannot read the checkpoint {path}: {error}") from error


def restore_checkpoint(state: TrainState, payload: dict[str, Any]) -> None:
    """Put model, optimizer, schedule, counters and RNG back where the checkpoint left them."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.schedule.load_state_dict(payload["schedule"])
    state.epoch = int(payload["epoch"])
    state.history = list(payload["history"])
    state.best_value = payload["best_value"]
    state.best_epoch = payload["best_epoch"]
    state.epochs_without_improvement = int(payload["epochs_without_improvement"])
    state.stop = bool(payload.get("stop", False))
    state.stop_reason = str(payload.get("stop_reason", ""))
    torch.set_rng_state(payload["torch_rng"])
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])


class SaveCheckpoint(Callback):
    """Write last.pt at the end of every epoch (after the other callbacks updated the state)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: TrainState) -> None:
        save_checkpoint(self.path, state)
