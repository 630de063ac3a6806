"""The ONNX graph itself, float or int8 (QDQ): what predict, serve and evaluate find in the model folder.

It is the graph every format starts from: exported with torch.export, normalization and softmax
inside, imgclf's metadata in its metadata_props, and checked against PyTorch (and, for int8,
against the float graph) by `imgclf.export.exporter.export_model` before it comes here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgclf.export.exporter import ExportJob, ExportResult

SUFFIX = ".onnx"
RUNTIME = "onnxruntime"


def write(job: ExportJob, result: ExportResult) -> bytes:
    result.kind = f"opset {result.opset}"
    return job.payload
