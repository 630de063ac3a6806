"""ONNX Runtime's format for ORT Mobile on Android and iOS, loaded back and compared with the ONNX
graph before it is written.

The checked ONNX graph is converted with basic (portable) graph optimizations; its imgclf metadata
travels with it. An int8 graph's fused kernels round a little differently, so an int8 ORT model
must answer as the float model does, as the int8 graph had to.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.errors import ModelError
from imgclf.export.quantize import probabilities

if TYPE_CHECKING:
    from imgclf.export.exporter import ExportJob, ExportResult

SUFFIX = ".ort"
RUNTIME = "onnxruntime"
MAX_ABS_DIFF = 1e-4


def write(job: ExportJob, result: ExportResult) -> bytes:
    """The ORT-format bytes of the job's graph, loaded back and compared with it."""
    ort_bytes = convert_to_ort(job.payload)
    if job.recheck_int8 is None:
        result.ort_max_abs_diff = check_ort(job.payload, ort_bytes, job.images, job.fixed_batch)
    else:
        result.ort_max_abs_diff = check_ort(job.payload, ort_bytes, job.images, job.fixed_batch, limit=None)
        result.quantization = job.recheck_int8(ort_bytes)
    result.kind = f"ORT format, opset {result.opset}"
    result.check_lines.append(
        f"ORT format loaded back: max |Δp| = {result.ort_max_abs_diff:.2e} vs the ONNX graph"
    )
    return ort_bytes


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
