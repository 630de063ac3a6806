"""The `unknown` answer: a model trained or calibrated with a minimum precision answers `unknown`
instead of a class when either of two tests fails.

- **Confidence**: the calibrated top-1 probability is below the threshold chosen on validation data
  so that the answers given keep precision ≥ P (`imgclf train --min-precision P`, `imgclf calibrate`).
- **Likeness to the training images**: the image's features (the input of the classifier's last
  linear layer) are farther from their nearest training images than those of 98% of the validation
  images are (k-nearest-neighbour scores in feature space, Sun et al., 2022). Two scores, because
  networks differ: the mean cosine *similarity* to the 10 nearest (direction) and the mean euclidean
  *distance* to the 10 nearest (size too). Each gets a threshold at the same validation quantile,
  chosen so that together they keep `KEEP` of the validation images.

A softmax is confident on images of no class at all. Keeping 98% of the validation images, flowers5's
EfficientNet-Lite0 turns 96% of MNIST digits into `unknown` (cosine alone 100%, distance alone 43%)
and MNIST's CNN 96% of flower photos (cosine alone 12%, distance alone 97%).

The feature bank (features of up to `BANK_IMAGES` training images) lives next to the weights in
`novelty.safetensors`; the thresholds live in imgclf.json's `calibration`. Exports carry both: the
bank inside the graph (two more outputs, `similarity` and `distance`), the thresholds in their
metadata.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.errors import ModelError
from imgclf.models.anatomy import classifier_name, classifier_of

UNKNOWN = "unknown"
BANK_FILE = "novelty.safetensors"
BANK_IMAGES = 2000  # training images, at most, whose features make the bank (a seeded sample)
NEIGHBOURS = 10  # the scores are means over this many nearest training images
KEEP = 0.98  # share of validation images the likeness test keeps


@contextlib.contextmanager
def tap_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass of this thread appends its features (N×D) to the list
    it yields (a server runs other requests through the same network in other threads)."""
    captured: list[torch.Tensor] = []
    owner = threading.get_ident()

    def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        if threading.get_ident() == owner:
            captured.append(inputs[0].detach().float().flatten(1))

    handle = classifier_of(model).register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


class _LogitsAndFeatures(nn.Module):
    """A classifier layer that also hands on its input: [logits | features]."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.layer(features), features.flatten(1)], dim=1)


def with_features(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` whose output is [logits | features] (N×(K+D)), for graphs that export both;
    a ModelError when the classifier layer is not the network's last step."""
    import copy

    tapped = copy.deepcopy(model).eval()
    name = classifier_name(model)
    parent = tapped.get_submodule(name.rpartition(".")[0]) if "." in name else tapped
    setattr(parent, name.rpartition(".")[2], _LogitsAndFeatures(tapped.get_submodule(name)))
    with torch.no_grad():
        logits = model.eval()(example)
        both = tapped(example)
    if both.shape[1] <= logits.shape[1] or not torch.allclose(both[:, : logits.shape[1]], logits, atol=1e-5):
        raise ModelError(
            "the classifier layer is not this network's last step: its features cannot be exported"
        )
    return tapped


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


class FeatureBank(nn.Module):
    """Features of training images; `forward(features)` → N×2 "likeness": each row's mean cosine
    similarity to its `neighbours` most similar bank rows, and its mean euclidean distance to its
    `neighbours` nearest. A module, so that exports compute it in the graph exactly as PyTorch does."""

    def __init__(self, vectors: torch.Tensor, neighbours: int = NEIGHBOURS) -> None:
        super().__init__()
        # kept in float16, as novelty.safetensors stores them (and exports: half the size); the
        # arithmetic is float32
        self.register_buffer("vectors", vectors.half())
        # distances are taken around the bank's mean: smaller numbers, less float32 cancellation
        self.register_buffer("center", vectors.half().float().mean(dim=0, keepdim=True))
        self.neighbours = max(1, min(neighbours, len(vectors)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        bank = self.vectors.float()
        features = features.float()
        similarity = (unit_rows(features) @ unit_rows(bank).T).topk(self.neighbours, dim=1).values.mean(dim=1)
        centered, bank = features - self.center, bank - self.center
        squared = (centered * centered).sum(dim=1, keepdim=True) + (bank * bank).sum(dim=1)[None, :]
        squared = squared - 2.0 * centered @ bank.T
        # the product finds the nearest; their distances are then taken exactly (its rounding would
        # blur distances that are small next to the features' size)
        nearest = (-squared).topk(self.neighbours, dim=1).indices
        distance = (centered[:, None, :] - bank[nearest]).norm(dim=2).mean(dim=1)
        return torch.stack([similarity, distance], dim=1)

    @classmethod
    def from_images(
        cls,
        features_of: Callable[[np.ndarray], np.ndarray],
        images: Iterable[np.ndarray],
        batch_size: int = 64,
    ) -> FeatureBank:
        """The bank of prepared uint8 images (H×W×C each), their features taken `batch_size` at a time."""
        rows: list[np.ndarray] = []
        iterator = iter(images)
        while chunk := list(itertools.islice(iterator, batch_size)):
            rows.append(features_of(np.stack(chunk)))
        if not rows:
            raise ModelError("no training image could be read to build the feature bank")
        return cls(torch.from_numpy(np.concatenate(rows)))

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from imgclf.io import write_atomic

        tensors = {"vectors": self.vectors.half().contiguous()}
        metadata = {"neighbours": str(self.neighbours)}
        write_atomic(folder / BANK_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, folder: Path) -> FeatureBank | None:
        """The bank saved in an artifact folder; None when it has none."""
        from safetensors import safe_open

        path = folder / BANK_FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                neighbours = int((handle.metadata() or {}).get("neighbours", NEIGHBOURS))
                return cls(handle.get_tensor("vectors"), neighbours)
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise ModelError(f"cannot read {path}: {error}") from error


@dataclass(frozen=True)
class UnknownRule:
    """When a prediction is `unknown`: confidence below `confidence`, or (with a feature bank)
    similarity to the training images below `similarity` or distance from them above `distance`."""

    confidence: float
    similarity: float | None = None
    distance: float | None = None
    min_precision: float | None = None

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any] | None) -> UnknownRule | None:
        chosen = (calibration or {}).get("threshold")
        if not chosen:
            return None

        def number(key: str) -> float | None:
            return None if chosen.get(key) is None else float(chosen[key])

        return cls(
            float(chosen["confidence"]), number("similarity"), number("distance"), chosen.get("min_precision")
        )

    @property
    def has_likeness(self) -> bool:
        return self.similarity is not None and self.distance is not None

    def unlike(self, likeness: np.ndarray | None) -> np.ndarray | None:
        """True for the rows (of an N×2 likeness) unlike the training images; None without a test."""
        if not self.has_likeness or likeness is None:
            return None
        return (likeness[:, 0] < self.similarity) | (likeness[:, 1] > self.distance)

    def mask(self, probabilities: np.ndarray, likeness: np.ndarray | None) -> np.ndarray:
        """True for the rows answered `unknown`."""
        unknown = probabilities.max(axis=1) < self.confidence
        unlike = self.unlike(likeness)
        return unknown if unlike is None else unknown | unlike

    def reason(self, confidence: float, likeness: tuple[float, float] | None) -> str | None:
        """Why one answer is `unknown`, in words; None when it is not."""
        if self.has_likeness and likeness is not None:
            similarity, distance = likeness
            if similarity < self.similarity:
                return f"unlike the training images (similarity {similarity:.3f} < {self.similarity:.3f})"
            if distance > self.distance:
                return f"unlike the training images (distance {distance:.4g} > {self.distance:.4g})"
        if confidence < self.confidence:
            return f"confidence {confidence:.4f} < threshold {self.confidence:.4f}"
        return None

    def describe(self) -> str:
        text = f"confidence < {self.confidence:.4f}"
        if self.min_precision is not None:
            text += f" (chosen for precision ≥ {self.min_precision:g})"
        if self.has_likeness:
            text += (
                f" or unlike the training images (similarity < {self.similarity:.3f} or distance > "
                f"{self.distance:.4g})"
            )
        return text
