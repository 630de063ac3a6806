"""`Predictor`: a saved model plus its own preprocessing, for files, Pillow images and arrays."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgclf.artifact import ModelInfo, load_artifact
from imgclf.data.decode import ImageDecodeError, decode_image, is_image_file
from imgclf.data.preprocess import PreprocessSpec, normalize_batch, prepare_image
from imgclf.data.sources import array_to_image, load_label_map
from imgclf.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes of one input; `error` is set (and the lists empty) when it could not be read."""

    source: str
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def probability(self) -> float | None:
        return self.probabilities[0] if self.probabilities else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.source,
            "predictions": [
                {"label": label, "name": name, "probability": round(probability, 6)}
                for label, name, probability in zip(self.labels, self.names, self.probabilities)
            ],
            "error": self.error,
        }


def expand_inputs(inputs: Sequence[str | Path]) -> list[str]:
    """Files as given; folders → their image files (recursively, sorted); globs → their matches.

    A path that matches nothing is kept, so it gets an error row instead of vanishing.
    """
    paths: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            for directory, subdirs, files in os.walk(path):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                paths += [str(Path(directory) / name) for name in sorted(files) if is_image_file(name)]
        elif path.exists():
            paths.append(str(path))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            paths += [m for m in matches if Path(m).is_file() and is_image_file(m)] or [text]
        else:
            paths.append(text)
    return paths


class Predictor:
    """Predict with a saved model; preprocessing comes from the model, never from the caller."""

    def __init__(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        device: torch.device,
        label_map: str | Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.info = info
        self.device = device
        self.names = list(info.display_names or info.classes)
        if label_map is not None:
            mapping = load_label_map(label_map, info.classes)
            self.names = [mapping[name] for name in info.classes]

    @classmethod
    def from_path(
        cls, path: str | Path, device: str = "cpu", label_map: str | Path | None = None
    ) -> Predictor:
        from imgclf.api import resolve_device

        resolved = resolve_device(device)
        model, info = load_artifact(path, device=resolved)
        return cls(model, info, resolved, label_map)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.preprocessing

    @torch.no_grad()
    def predict_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """Prepared uint8 images (N×H×W×C, as `prepare_image` makes them) → class probabilities N×K."""
        batch = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).to(self.device)
        logits = self.model(normalize_batch(batch, self.spec))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _prepare(self, item: Any) -> tuple[str, np.ndarray | None, str | None]:
        if isinstance(item, Image.Image):
            return "<image>", prepare_image(item, self.spec), None
        if isinstance(item, np.ndarray):
            return "<array>", prepare_image(array_to_image(item), self.spec), None
        source = str(item)
        try:
            if not Path(source).is_file():
                return source, None, "file not found"
            image = decode_image(source, draft_size=(self.spec.width, self.spec.height))
            return source, prepare_image(image, self.spec), None
        except ImageDecodeError as error:
            return source, None, str(error)
        except OSError as error:
            return source, None, f"cannot read: {error}"

    def iter_predict(
        self, items: Iterable[Any], top_k: int = 5, batch_size: int = 64, workers: int | None = None
    ) -> Iterator[Prediction]:
        """Predictions in input order; unreadable inputs give a Prediction with `error` set."""
        top_k = max(1, min(top_k, len(self.classes)))
        workers = workers or min(8, os.cpu_count() or 1)
        items = list(items)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without holding the GIL
            for start in range(0, len(items), batch_size):
                prepared = list(pool.map(self._prepare, items[start : start + batch_size]))
                good = [entry for entry in prepared if entry[1] is not None]
                probabilities = self.predict_arrays(np.stack([entry[1] for entry in good])) if good else None
                row = 0
                for source, array, error in prepared:
                    if array is None:
                        yield Prediction(source, error=error)
                        continue
                    yield self._top_k(source, probabilities[row], top_k)
                    row += 1

    def _top_k(self, source: str, probabilities: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return Prediction(
            source,
            labels=[self.classes[i] for i in order],
            names=[self.names[i] for i in order],
            probabilities=[float(probabilities[i]) for i in order],
        )

    def predict(self, inputs: Any, top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Predict one input or a list: file paths, Pillow images or arrays (H×W[×C])."""
        if isinstance(inputs, (str, Path, Image.Image)) or (
            isinstance(inputs, np.ndarray) and inputs.ndim <= 3
        ):
            inputs = [inputs]
        return list(self.iter_predict(inputs, top_k=top_k, batch_size=batch_size))

    def predict_paths(
        self, inputs: Sequence[str | Path], top_k: int = 5, batch_size: int = 64
    ) -> Iterator[Prediction]:
        """Files, folders (recursive) or globs → predictions, one per image."""
        paths = expand_inputs(inputs)
        if not paths:
            raise UsageError("no input image given")
        return self.iter_predict(paths, top_k=top_k, batch_size=batch_size)
