"""Where the model looked: Grad-CAM (Selvaraju et al., 2017), written here in PyTorch.

The heatmap of a class is the ReLU of the last spatial feature maps weighted by the mean gradient of
that class's score over each map, upsampled to the model's input. The layer is found, not
configured: the last layer whose output still has a spatial extent, pooling aside (the last
convolution block of the builtin CNNs, `conv_head`'s activation in EfficientNet-Lite, the last
stage of other timm models). It runs on the PyTorch model, on the CPU or a GPU; an exported model
has no gradients to follow.

imgclf's own code rather than the `grad-cam` package: the method is twenty lines, it must find the
layer of any timm model by itself, and it keeps the dependency list short.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.data.preprocess import normalize_batch
from imgclf.errors import UsageError
from imgclf.inference.predictor import Prediction, Predictor, with_temperature
from imgclf.models.anatomy import feature_map_layer


@dataclass
class Explanation:
    """One image, the class explained, and the heatmap over the model's input (H×W, 0–1); `unknown`
    says why the model's answer for the image is `unknown` (None when it names a class)."""

    source: str
    label: str
    name: str
    probability: float
    image: np.ndarray  # the prepared uint8 image the model saw, H×W×C
    heatmap: np.ndarray
    unknown: str | None = None

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heatmap's maximum, in the model's input pixels."""
        row, column = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(row), int(column)


def grad_cam(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps N×H×W in 0–1, probabilities N×K) for normalized inputs; `classes` (N) picks the
    class each heatmap explains, the top-1 class when None."""
    captured: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def keep(_: nn.Module, __: Any, output: torch.Tensor) -> None:
        if threading.get_ident() == owner:  # not a forward pass another request runs meanwhile
            captured["maps"] = output

    hook = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(inputs.requires_grad_(True)).float()
            chosen = logits.argmax(1) if classes is None else classes.to(logits.device)
            score = logits.gather(1, chosen[:, None]).sum()
            maps = captured["maps"]
            (gradients,) = torch.autograd.grad(score, maps)
    finally:
        hook.remove()
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps.detach().float()).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    cam = (cam - low) / (high - low).clamp_min(1e-12)
    return cam.cpu().numpy(), torch.softmax(logits.detach(), 1).cpu().numpy()


class Explainer:
    """Grad-CAM heatmaps for a saved model's predictions (its own preprocessing, as `Predictor`)."""

    def __init__(self, predictor: Predictor) -> None:
        if predictor.model is None:
            raise UsageError("explanations need the PyTorch model: give the model folder, not an export")
        self.predictor = predictor
        spec = predictor.spec
        self.layer = feature_map_layer(predictor.model.eval(), spec.channels, spec.height, spec.width)

    def explain_arrays(
        self, arrays: np.ndarray, class_index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prepared uint8 images N×H×W×C → (heatmaps N×H×W, probabilities N×K)."""
        arrays = np.require(arrays, requirements=["C_CONTIGUOUS", "WRITEABLE"])  # torch needs both
        batch = torch.from_numpy(arrays).permute(0, 3, 1, 2).to(self.predictor.device)
        inputs = normalize_batch(batch, self.predictor.spec)
        classes = None if class_index is None else torch.full((len(arrays),), class_index, dtype=torch.long)
        heatmaps, probabilities = grad_cam(self.predictor.model, self.layer, inputs, classes)
        if self.predictor.multi_label:  # one sigmoid per label: grad_cam's softmax is not its answer
            with torch.no_grad():
                probabilities = self.predictor.activate(self.predictor.model(inputs))
            return heatmaps, probabilities
        return heatmaps, with_temperature(probabilities, self.predictor.temperature)  # as Predictor answers

    def class_index(self, class_name: str | None) -> int | None:
        if class_name is None:
            return None
        if class_name not in self.predictor.classes:
            known = ", ".join(self.predictor.classes[:10])
            raise UsageError(f"--class {class_name!r} is not one of the model's classes ({known} …)")
        return self.predictor.classes.index(class_name)

    def explain_prepared(self, source: str, array: np.ndarray, class_name: str | None = None) -> Explanation:
        """The Explanation of one prepared uint8 image (H×W×C, as `prepare_image` makes it)."""
        chosen = self.class_index(class_name)
        heatmaps, probabilities = self.explain_arrays(array[None], chosen)
        index = int(probabilities[0].argmax()) if chosen is None else chosen
        classes, names = self.predictor.classes, self.predictor.names
        unknown = None
        if self.predictor.unknown_rule is not None:  # the explained class may be a guess: say so
            _, likeness = self.predictor.score_arrays(array[None])
            pair = None if likeness is None else (float(likeness[0, 0]), float(likeness[0, 1]))
            unknown = self.predictor.unknown_rule.reason(float(probabilities[0].max()), pair)
        return Explanation(
            source, classes[index], names[index], float(probabilities[0, index]), array, heatmaps[0], unknown
        )

    def explain(
        self, items: Iterable[Any], class_name: str | None = None
    ) -> Iterator[Explanation | Prediction]:
        """An Explanation per readable input (files, Pillow images, arrays); the failed Prediction
        (with its `error`) for an input that cannot be read."""
        self.class_index(class_name)  # an unknown class is an error before any image is read
        for item in items:
            source, array, error = self.predictor.prepare_input(item)
            if array is None:
                yield Prediction(source, error=error)
            else:
                yield self.explain_prepared(source, array, class_name)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image (uint8 H×W×C) with the heatmap over it in the turbo colormap, as uint8 RGB."""
    from matplotlib import colormaps

    colours = colormaps["turbo"](heatmap)[..., :3]
    base = image.astype(np.float32) / 255.0
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    mixed = (1 - alpha) * base + alpha * colours
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def explanation_png(explanation: Explanation, scale: int | None = None) -> bytes:
    """The image and its heatmap side by side as PNG bytes; small inputs enlarged (to about 256 px)."""
    from PIL import Image

    original = explanation.image if explanation.image.shape[-1] == 3 else np.repeat(explanation.image, 3, -1)
    pair = np.concatenate([original, overlay(explanation.image, explanation.heatmap)], axis=1)
    picture = Image.fromarray(pair)
    scale = scale or max(1, 256 // max(explanation.image.shape[:2]))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
