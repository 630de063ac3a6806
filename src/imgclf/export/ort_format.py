"""ONNX Runtime's ORT format, for ORT Mobile on Android and iOS: the checked ONNX graph converted
with basic (portable) graph optimizations, loaded back in ONNX Runtime and compared before it is
written. The imgclf metadata of the ONNX graph travels with it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from imgclf.errors import ModelError
from imgclf.export.quantize import probabilities

MAX_ABS_DIFF = 1e-4


def convert_to_ort(onnx_model: bytes) -> bytes:
    """The ORT-format bytes of an ONNX graph (as ONNX Runtime's convert_onnx_models_to_ort writes them)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="imgclf-ort-") as folder:
        target = Path(folder) / "model.ort"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable
        options.optimized_model_filepath = str(target)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ModelError(f"ORT-format conversion failed: {str(error).splitlines()[0]}") from error
        return target.read_bytes()


def check_ort(
    onnx_model: bytes,
    ort_model: bytes,
    images: np.ndarray,
    fixed_batch: int | None = None,
    limit: float | None = MAX_ABS_DIFF,
) -> float:
    """The largest probability difference between the ORT-format model, loaded back, and the ONNX
    graph it came from; a ModelError when it is over `limit` (None: no limit) or the metadata did not
    travel."""
    import onnxruntime as ort

    session = ort.InferenceSession(ort_model, providers=["CPUExecutionProvider"])
    if "imgclf.model" not in session.get_modelmeta().custom_metadata_map:
        raise ModelError("the ORT-format model lost the imgclf metadata; nothing was written")
    ort_answers = probabilities(ort_model, images, fixed_batch)
    difference = float(np.abs(ort_answers - probabilities(onnx_model, images, fixed_batch)).max())
    if limit is not None and not difference <= limit:
        raise ModelError(
            f"the ORT-format model and the ONNX graph disagree: max |Δp| = {difference:.2e} "
            f"(limit {limit:.0e}); nothing was written"
        )
    return difference
