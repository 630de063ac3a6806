"""Running an exported model with ONNX Runtime: the session, the batches, the metadata it carries."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.artifact import WEIGHTS_FILE, ModelInfo, load_model_info
from imgclf.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SIMILARITY_NAME = "similarity"  # outputs of models with a feature bank (see inference.unknown)
DISTANCE_NAME = "distance"
# metadata key: the temperature the graph's softmax already applies (Predictor then applies none)
TEMPERATURE_KEY = "imgclf.temperature"


def weights_digest(artifact_dir: Path) -> str:
    """sha256 of model.safetensors: ties an export to the weights it was made from."""
    digest = hashlib.sha256()
    with (artifact_dir / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with full graph optimization."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception classes for bad files
        raise ModelError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from error


def run_in_batches(session: Any, images: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """Run float images through a session → probabilities; a fixed-batch model gets full batches
    (the last one padded)."""
    return run_outputs(session, images, fixed_batch, [OUTPUT_NAME])[0]


def run_outputs(
    session: Any, images: np.ndarray, fixed_batch: int | None, names: list[str]
) -> list[np.ndarray]:
    """The named outputs of a session on float images, batch by batch for a fixed-batch model."""
    if fixed_batch is None:
        return session.run(names, {INPUT_NAME: images})
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(images), fixed_batch):
        chunk = images[start : start + fixed_batch]
        rows = len(chunk)
        if rows < fixed_batch:
            pad = np.zeros((fixed_batch - rows, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        parts.append([output[:rows] for output in session.run(names, {INPUT_NAME: chunk})])
    return [np.concatenate([part[i] for part in parts]) for i in range(len(names))]


def output_names(session: Any) -> list[str]:
    return [output.name for output in session.get_outputs()]


def session_scores(
    session: Any, images: np.ndarray, fixed_batch: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities N×K of float images, and their likeness to the training images (N×2:
    similarity, distance) when the graph has a feature bank, else None."""
    if SIMILARITY_NAME not in output_names(session):
        return run_in_batches(session, images, fixed_batch), None
    probabilities, similarity, distance = run_outputs(
        session, images, fixed_batch, [OUTPUT_NAME, SIMILARITY_NAME, DISTANCE_NAME]
    )
    return probabilities, np.stack([similarity, distance], axis=1)


class OnnxClassifier:
    """An exported model run by ONNX Runtime, with the imgclf metadata it carries."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise UsageError(f"model not found: {self.path}")
        self.session = create_session(self.path, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "imgclf.model" not in metadata:
            raise ModelError(f"{self.path} was not exported by imgclf (no imgclf metadata)")
        self.info = metadata_info(metadata)
        self.weights_sha256 = metadata.get("imgclf.weights_sha256", "")
        # exports since the graph applies the model's temperature say so; older ones leave it to Predictor
        self.temperature_in_graph = TEMPERATURE_KEY in metadata
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def __call__(self, arrays: np.ndarray) -> np.ndarray:
        """Prepared uint8 images N×H×W×C → class probabilities N×K."""
        return self.scores(arrays)[0]

    def scores(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Prepared uint8 images N×H×W×C → class probabilities N×K, and each image's likeness to
        the training images (N×2: similarity, distance; None when the graph has no feature bank)."""
        images = np.ascontiguousarray(arrays.transpose(0, 3, 1, 2), dtype=np.float32)
        images /= 255.0
        return session_scores(self.session, images, self.fixed_batch)


def stale_reason(artifact_dir: Path, info: ModelInfo, weights_sha256: str) -> str | None:
    """Why an export (its embedded model info and weights digest) no longer answers as the model in
    `artifact_dir` does, or None when it is current: other weights, label thresholds or calibration
    (`imgclf calibrate` changes the last two without touching the weights)."""
    if weights_sha256 != weights_digest(artifact_dir):
        return "is older than the model's weights"
    current = load_model_info(artifact_dir)
    if info.thresholds != current.thresholds:
        return "carries older label thresholds than the model's"
    if info.calibration != current.calibration:
        return "carries an older calibration than the model's"
    return None


def metadata_info(metadata: dict[str, str]) -> ModelInfo:
    """The model info an imgclf export carries in its graph's metadata."""
    return ModelInfo.from_dict(json.loads(metadata["imgclf.model"]))


def load_current_export(artifact_dir: Path, threads: int | None = None) -> OnnxClassifier | None:
    """The artifact's model.onnx, ready to run, when it answers as the model now in the folder does
    (`stale_reason`)."""
    path = artifact_dir / ONNX_FILE
    if not path.is_file():
        return None
    try:
        export = OnnxClassifier(path, threads)
    except ModelError:  # a damaged export is ignored here; torch runs the model instead
        logger.warning("%s cannot be read; predicting with PyTorch", path)
        return None
    reason = stale_reason(artifact_dir, export.info, export.weights_sha256)
    if reason is not None:
        logger.warning("%s %s; predicting with PyTorch (export again)", path, reason)
        return None
    return export
