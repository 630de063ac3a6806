"""`Predictor`: a saved model plus its own preprocessing, for files, Pillow images and arrays.

Every prediction imgclf makes (`predict`, `serve`, `evaluate`) runs through it: one preprocessing,
one test-time augmentation, PyTorch or ONNX Runtime behind the same call.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from imgclf.artifact import ModelInfo, load_artifact, resolve_artifact_path
from imgclf.data.decode import UPLOAD_FORMATS, ImageDecodeError
from imgclf.data.imageset import array_to_image
from imgclf.data.label_map import load_label_map
from imgclf.data.parquet import is_row_location
from imgclf.data.preprocess import PreprocessSpec, load_prepared, normalize_batch, prepare_image
from imgclf.device import resolve_device
from imgclf.errors import UsageError
from imgclf.inference.unknown import UNKNOWN, FeatureBank, UnknownRule, tap_features

if TYPE_CHECKING:
    from imgclf.inference.onnx_runtime import OnnxClassifier

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes of one input; `error` is set (and the lists empty) when it could not be read.

    `unknown` says why the model answers `unknown` (see `inference.unknown`), None when it answers;
    `labels[0]` stays its best guess either way. `similarity` and `distance`: to the nearest
    training images, when the model has a feature bank. A multi-label model's answer is `present`:
    every label whose probability reaches its threshold, most likely first (empty: none of them);
    `labels` and `probabilities` are then its top-k labels by probability.
    """

    source: str
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None
    unknown: str | None = None
    similarity: float | None = None
    distance: float | None = None
    present: list[str] | None = None  # multi-label models only
    present_names: list[str] | None = None
    present_probabilities: list[float] | None = None
    thresholds: list[float] | None = None

    @property
    def label(self) -> str | None:
        """The answer: the top class, or "unknown"; for a multi-label model its labels joined by
        "|" ("" for none of them)."""
        if self.present is not None:
            return "|".join(self.present) if not self.error else None
        if self.unknown is not None:
            return UNKNOWN
        return self.labels[0] if self.labels else None

    @property
    def is_unknown(self) -> bool:
        return self.unknown is not None

    @property
    def probability(self) -> float | None:
        return self.probabilities[0] if self.probabilities else None

    def to_dict(self) -> dict[str, Any]:
        present = {}
        if self.present is not None:
            present = {
                "labels": [
                    {"label": label, "name": name, "probability": round(probability, 6),
                     "threshold": round(threshold, 6)}
                    for label, name, probability, threshold in zip(
                        self.present, self.present_names or self.present, self.present_probabilities or [],
                        self.thresholds or [],
                    )
                ]
            }  # fmt: skip
        return {
            "path": self.source,
            "label": self.label,
            **present,
            "unknown": self.unknown,
            **({"similarity": round(self.similarity, 6)} if self.similarity is not None else {}),
            **({"distance": round(self.distance, 6)} if self.distance is not None else {}),
            "predictions": [
                {"label": label, "name": name, "probability": round(probability, 6)}
                for label, name, probability in zip(self.labels, self.names, self.probabilities)
            ],
            "error": self.error,
        }


BACKENDS = ("auto", "torch", "onnxruntime")


def export_suffixes() -> tuple[str, ...]:
    """The suffixes of exported model files that ONNX Runtime runs (.onnx, .ort): those the export
    formats declare with RUNTIME "onnxruntime", read from their files without importing them."""
    from imgclf.registry import EXPORT_FORMATS

    formats = EXPORT_FORMATS.entries().values()
    return tuple(
        entry.declared["SUFFIX"] for entry in formats if entry.declared.get("RUNTIME") == "onnxruntime"
    )


def warn_if_not_flip_trained(info: ModelInfo) -> None:
    """Mirror-image test-time augmentation suits models trained with horizontal flips."""
    augment = ((info.training or {}).get("config") or {}).get("augment") or {}
    if augment and not augment.get("hflip"):
        logger.warning(
            "test-time augmentation averages each image with its mirror image, but this model was "
            "trained without --hflip: mirrored inputs may lower its accuracy"
        )


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling in probability space: softmax(log p / T). T > 1 softens over-confident
    answers; the top class never changes. Applied to the answers of every backend alike."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def load_bank(artifact_dir: Path, device: torch.device) -> FeatureBank | None:
    bank = FeatureBank.load(artifact_dir)
    return None if bank is None else bank.to(device)


class Predictor:
    """Predict with a saved model; preprocessing comes from the model, never from the caller.

    Runs the network with PyTorch (`model`) or with ONNX Runtime (`onnx`, an exported model);
    `backend` says which.
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        info: ModelInfo,
        device: torch.device,
        label_map: str | Path | None = None,
        onnx: OnnxClassifier | None = None,
        tta: bool = False,
        bank: FeatureBank | None = None,
    ) -> None:
        self.model = model.eval() if model is not None else None
        self.bank = bank  # PyTorch: the features of training images (an export has it in its graph)
        self.tta = tta
        self.onnx = onnx
        self.backend = "onnxruntime" if onnx is not None else "torch"
        self.info = info
        self.device = device
        self.names = list(info.display_names or info.classes)
        # several labels per image: sigmoid outputs, each label answered at its own threshold
        self.multi_label = info.multi_label
        self.thresholds = np.asarray(info.thresholds or [0.5] * len(info.classes), dtype=np.float32)
        # fitted on the validation split at the end of training (1.0: none); an export's graph applies
        # it itself
        self.temperature = float((info.calibration or {}).get("temperature", 1.0))
        if onnx is not None and onnx.temperature_in_graph:
            self.temperature = 1.0
        # `unknown` below a confidence (and a likeness to the training images), when chosen
        self.unknown_rule = UnknownRule.from_calibration(info.calibration)
        if label_map is not None:
            mapping = load_label_map(label_map, info.classes)
            self.names = [mapping[name] for name in info.classes]

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        device: str = "cpu",
        label_map: str | Path | None = None,
        backend: str = "auto",
        threads: int | None = None,
        tta: bool = False,
    ) -> Predictor:
        """Load an artifact folder, a run folder or an exported .onnx file.

        backend "auto" runs an artifact's exported model.onnx with ONNX Runtime when the device is
        the CPU and the export matches the weights, else PyTorch; a .onnx file always runs with
        ONNX Runtime. `tta`: see `predict_arrays`.
        """
        predictor = cls._load(path, device, label_map, backend, threads)
        predictor.tta = tta
        if tta:
            warn_if_not_flip_trained(predictor.info)
        return predictor

    @classmethod
    def _load(
        cls,
        path: str | Path,
        device: str,
        label_map: str | Path | None,
        backend: str,
        threads: int | None,
    ) -> Predictor:
        from imgclf.inference.onnx_runtime import OnnxClassifier, load_current_export

        if backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        location = Path(path).expanduser()
        if location.suffix.lower() in export_suffixes():
            if backend == "torch":
                raise UsageError(
                    f"a {location.suffix} file runs with ONNX Runtime; for --backend torch give the model "
                    "folder"
                )
            onnx = OnnxClassifier(location, threads)
            return cls(None, onnx.info, torch.device("cpu"), label_map, onnx=onnx)
        resolved = resolve_device(device)
        artifact_dir = resolve_artifact_path(location)
        if backend == "onnxruntime" or (backend == "auto" and resolved.type == "cpu"):
            onnx = load_current_export(artifact_dir, threads)
            if onnx is not None:
                return cls(None, onnx.info, torch.device("cpu"), label_map, onnx=onnx)
            if backend == "onnxruntime":
                raise UsageError(
                    f"{artifact_dir} has no current model.onnx; run `imgclf export {path}` first"
                )
        model, info = load_artifact(artifact_dir, device=resolved)
        return cls(model, info, resolved, label_map, bank=load_bank(artifact_dir, resolved))

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.preprocessing

    def predict_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """Prepared uint8 images (N×H×W×C, as `prepare_image` makes them) → class probabilities N×K.

        With `tta` (test-time augmentation) the probabilities are the mean of the image's and its
        mirror image's, as fastai's `tta` and Ultralytics' `augment=True` flip: twice the compute.
        The model's temperature (`imgclf.json` calibration) scales each pass's answers.
        """
        return self.score_arrays(arrays)[0]

    def score_arrays(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict_arrays`' probabilities, and each image's likeness to the training images (N×2:
        similarity, distance; None when the model has no feature bank); with `tta`, both are the
        mean of the two passes."""
        probabilities, likeness = self._scores(arrays)
        probabilities = with_temperature(probabilities, self.temperature)
        if self.tta:
            mirrored, mirrored_likeness = self._scores(arrays[:, :, ::-1])
            probabilities = (probabilities + with_temperature(mirrored, self.temperature)) / 2.0
            if likeness is not None:
                likeness = (likeness + mirrored_likeness) / 2.0
        return probabilities, likeness

    def score_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """`score_arrays` of a uint8 N×C×H×W batch, as imgclf's data loaders give them."""
        return self.score_arrays(images.permute(0, 2, 3, 1).cpu().numpy())

    @torch.no_grad()
    def _scores(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.onnx is not None:
            return self.onnx.scores(np.ascontiguousarray(arrays))
        arrays = np.require(arrays, requirements=["C_CONTIGUOUS", "WRITEABLE"])  # torch needs both
        batch = normalize_batch(torch.from_numpy(arrays).permute(0, 3, 1, 2).to(self.device), self.spec)
        if self.bank is None:
            return self.activate(self.model(batch)), None
        with tap_features(self.model) as features:
            logits = self.model(batch)
        likeness = self.bank.to(self.device)(features[-1]).cpu().numpy()
        return self.activate(logits), likeness

    def activate(self, logits: torch.Tensor) -> np.ndarray:
        """Logits → probabilities: softmax over the classes, or one sigmoid per label."""
        if self.multi_label:
            return torch.sigmoid(logits.float()).cpu().numpy()
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    @torch.no_grad()
    def features(self, arrays: np.ndarray) -> np.ndarray:
        """The features (input of the classifier's last linear layer) of prepared uint8 images N×D."""
        if self.model is None:
            raise UsageError("features need the PyTorch model: give the model folder, not an export")
        arrays = np.require(arrays, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        batch = normalize_batch(torch.from_numpy(arrays).permute(0, 3, 1, 2).to(self.device), self.spec)
        with tap_features(self.model) as features:
            self.model(batch)
        return features[-1].cpu().numpy()

    def prepare_input(self, item: Any) -> tuple[str, np.ndarray | None, str | None]:
        if isinstance(item, Image.Image):
            return "<image>", prepare_image(item, self.spec), None
        if isinstance(item, np.ndarray):
            return "<array>", prepare_image(array_to_image(item), self.spec), None
        source = str(item)
        try:
            if not Path(source).is_file() and not is_row_location(source):  # a Parquet row reads as a file
                return source, None, "file not found"
            return source, load_prepared(source, self.spec, UPLOAD_FORMATS), None  # anyone's files
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
        iterator = iter(items)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without holding the GIL
            while chunk := list(itertools.islice(iterator, batch_size)):
                prepared = list(pool.map(self.prepare_input, chunk))
                good = [entry for entry in prepared if entry[1] is not None]
                probabilities, likeness = (
                    self.score_arrays(np.stack([entry[1] for entry in good])) if good else (None, None)
                )
                row = 0
                for source, array, error in prepared:
                    if array is None:
                        yield Prediction(source, error=error)
                        continue
                    row_likeness = None if likeness is None else likeness[row]
                    yield self.top_classes(source, probabilities[row], top_k, row_likeness)
                    row += 1

    def top_classes(
        self, source: str, probabilities: np.ndarray, top_k: int, likeness: Sequence[float] | None = None
    ) -> Prediction:
        """The `top_k` classes of one row of probabilities, most likely first; `unknown` set when
        the model's unknown rule says so (`likeness`: the row's similarity and distance)."""
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        if self.multi_label:
            full = np.argsort(-probabilities, kind="stable")
            present = [int(i) for i in full if probabilities[i] >= self.thresholds[i]]
            return Prediction(
                source,
                labels=[self.classes[i] for i in order],
                names=[self.names[i] for i in order],
                probabilities=[float(probabilities[i]) for i in order],
                present=[self.classes[i] for i in present],
                present_names=[self.names[i] for i in present],
                present_probabilities=[float(probabilities[i]) for i in present],
                thresholds=[float(self.thresholds[i]) for i in present],
            )
        rule = self.unknown_rule
        pair = None if likeness is None else (float(likeness[0]), float(likeness[1]))
        return Prediction(
            source,
            labels=[self.classes[i] for i in order],
            names=[self.names[i] for i in order],
            probabilities=[float(probabilities[i]) for i in order],
            unknown=None if rule is None else rule.reason(float(probabilities[order[0]]), pair),
            similarity=None if pair is None else pair[0],
            distance=None if pair is None else pair[1],
        )

    def predict(self, inputs: Any, top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Predict one input or a list: file paths, Pillow images or arrays (H×W[×C])."""
        if isinstance(inputs, (str, Path, Image.Image)) or (
            isinstance(inputs, np.ndarray) and inputs.ndim <= 3
        ):
            inputs = [inputs]
        return list(self.iter_predict(inputs, top_k=top_k, batch_size=batch_size))
