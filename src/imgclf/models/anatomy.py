"""What a network is made of, as every other layer asks it: its classifier, its features (the input
of the classifier), its blocks from stem to head, the layers between the last block and the head,
and the layer Grad-CAM looks at.

Training (head on cached features, unfreezing the last blocks), Grad-CAM, the `unknown` feature
bank and export ask these functions only, never the network's attributes. Each family of networks
has one `Anatomy`; `anatomy_of` finds it. timm's networks and imgclf's builtin CNNs are known here;
a new family registers its own with `register_family` (see `imgclf.models.factory`) and nothing
outside `models/` changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgclf.errors import ModelError, UsageError

POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# layers of timm's networks between the last block and the classifier (EfficientNet's conv_head and
# bn2, a ViT's final norm): they train whenever the last blocks do
NECK_NAMES = ("conv_head", "bn2", "norm", "head_norm", "fc_norm")


@dataclass(frozen=True)
class Anatomy:
    """How one family of networks is taken apart.

    classifier: the final linear layer (its input are the features).
    features: the features of a batch, N×D (the tutorials' "bottleneck features").
    blocks: the backbone's stages in order, the last ones nearest the head.
    neck: the layers between the last block and the classifier.
    """

    matches: Callable[[nn.Module], bool]
    classifier: Callable[[nn.Module], nn.Linear]
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    blocks: Callable[[nn.Module], list[nn.Module]]
    neck: Callable[[nn.Module], list[nn.Module]] = lambda model: []


def _timm_blocks(model: Any) -> list[nn.Module]:
    if hasattr(model, "blocks"):
        return list(model.blocks)
    stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if stages:  # ResNets
        return stages
    if hasattr(model, "stages"):
        return list(model.stages)
    classifier = model.get_classifier()
    return [m for m in model.children() if m is not classifier]


def _timm_neck(model: nn.Module) -> list[nn.Module]:
    return [getattr(model, name) for name in NECK_NAMES if isinstance(getattr(model, name, None), nn.Module)]


TIMM = Anatomy(
    matches=lambda model: hasattr(model, "get_classifier") and hasattr(model, "forward_head"),
    classifier=lambda model: model.get_classifier(),
    features=lambda model, inputs: model.forward_head(model.forward_features(inputs), pre_logits=True),
    blocks=_timm_blocks,
    neck=_timm_neck,
)
# imgclf's builtins (imgclf.models.builtin): `features` (convolutions) then `head` (dense layers, the
# classifier last)
BUILTIN = Anatomy(
    matches=lambda model: (
        isinstance(getattr(model, "head", None), nn.Sequential) and hasattr(model, "features")
    ),
    classifier=lambda model: model.head[-1],
    features=lambda model, inputs: model.head[:-1](model.features(inputs)),
    blocks=lambda model: [model.features, *model.head[:-1]],
)
ANATOMIES: list[Anatomy] = [TIMM, BUILTIN]  # the kinds of network known, asked in order


def register_anatomy(anatomy: Anatomy) -> None:
    """Teach imgclf a new family of networks (checked before the known ones)."""
    ANATOMIES.insert(0, anatomy)


def anatomy_of(model: nn.Module) -> Anatomy:
    for anatomy in ANATOMIES:
        if anatomy.matches(model):
            return anatomy
    raise ModelError(f"imgclf does not know how {type(model).__name__} is made (register_family)")


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final classification layer."""
    return anatomy_of(model).classifier(model)


def penultimate_features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The features the classifier sees, N×D."""
    return anatomy_of(model).features(model, inputs)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages in order, the last ones nearest the head."""
    return anatomy_of(model).blocks(model)


def neck_of(model: nn.Module) -> list[nn.Module]:
    """The layers between the last block and the classifier (they train with the last blocks)."""
    return anatomy_of(model).neck(model)


def classifier_name(model: nn.Module) -> str:
    """The classifier's dotted name inside the network (to replace it in a copy)."""
    layer = classifier_of(model)
    return next(name for name, module in model.named_modules() if module is layer)


def backbone_digest(model: nn.Module) -> str:
    """A digest of every weight the penultimate features depend on: all but the classifier's.

    Names the backbone by what it holds, not by where its weights came from (a `--weights` file
    replaced at the same path, another hub revision), so cached bottleneck features never outlive it.
    """
    classifier = {id(tensor) for tensor in classifier_of(model).state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in classifier:
            continue
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(values.view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()


def feature_map_layer(model: nn.Module, channels: int, height: int, width: int) -> nn.Module:
    """The layer Grad-CAM looks at: the last leaf module whose output has a spatial extent (more than
    1×1), pooling aside, found by one forward pass of a blank image."""
    found: list[nn.Module] = []
    hooks = []

    def record(module: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            found.append(module)

    for module in model.modules():
        if not list(module.children()) and not isinstance(module, POOLING):
            hooks.append(module.register_forward_hook(record))
    parameter = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise UsageError("this model has no spatial feature maps to explain (an MLP?)")
    return found[-1]


class GradFloat32DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that, while gradients are taken, runs in float32 inside bf16
    autocast. On CPUs with AVX-512 BF16 and AMX, oneDNN 3.12 computes a bf16 depthwise convolution's
    weight gradient with its generic grouped kernel (`jit_bf16`), which took over half of an
    EfficientNet-Lite0 training step; in float32 it takes the depthwise kernel. Forward passes
    without gradients (validation, features) keep bf16, where the depthwise kernel is fast. Same
    parameters and state_dict as nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            torch.is_grad_enabled() and self.weight.requires_grad and torch.is_autocast_enabled(x.device.type)
        ):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def depthwise_gradients_in_float32(model: nn.Module) -> int:
    """Turn every plain depthwise nn.Conv2d of `model` into a `GradFloat32DepthwiseConv2d` (in place,
    the parameters untouched); returns how many. For bf16 training on the CPU."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and module.groups > 1 and module.groups == module.in_channels:
            module.__class__ = GradFloat32DepthwiseConv2d
            changed += 1
    return changed
