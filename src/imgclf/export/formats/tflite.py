"""TFLite / LiteRT at batch 1, checked with the LiteRT interpreter; needs pip install 'imgclf[tflite]'.

The export goes through `litert-torch` and is checked with the LiteRT interpreter before it is
written (the optional extra `imgclf[tflite]`).

The model has the ONNX export's contract: input float32 1×C×H×W (pixels / 255, batch fixed at 1),
output float32 1×K probabilities, normalization and softmax inside. The imgclf metadata (classes,
display names, preprocessing, the input contract, imgclf.json, the weights' digest) goes into the
flatbuffer's own `metadata` entries, each a UTF-8 string.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf.errors import ModelError, UsageError

if TYPE_CHECKING:
    from imgclf.export.exporter import ExportJob, ExportResult

SUFFIX = ".tflite"
RUNTIME = None  # predict runs .onnx and .ort files; a .tflite file is for phones and LiteRT
MAX_ABS_DIFF = 1e-4
EXTRA = "pip install 'imgclf[tflite]' (litert-torch and ai-edge-litert)"


def check_options(quantize: str, dynamic_batch: bool) -> None:
    if quantize != "none" or not dynamic_batch:
        raise UsageError(
            "--format tflite exports the float model at batch 1: leave out --quantize and --fixed-batch"
        )


def write(job: ExportJob, result: ExportResult) -> bytes:
    """The TFLite flatbuffer of the export wrapper, checked in the LiteRT interpreter against PyTorch."""
    if job.wrapper.bank is not None:
        raise ModelError(
            "--format tflite cannot carry this model's unknown answer: its likeness test takes the "
            "nearest training images (top-k), which the LiteRT interpreter does not run; export "
            "--format onnx or ort, or `imgclf calibrate` without --min-precision first"
        )
    payload = convert_to_tflite(job.wrapper, job.example, job.metadata)
    result.tflite_max_abs_diff = check_tflite(payload, job.wrapper, job.images)
    result.kind, result.batch = "TFLite", "1"
    result.check_lines.append(
        f"TFLite in the LiteRT interpreter: max |Δp| = {result.tflite_max_abs_diff:.2e} vs PyTorch"
    )
    return payload


def _modules() -> tuple[Any, Any, Any, Any]:
    try:
        import flatbuffers
        import litert_torch
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise UsageError(
            f"--format tflite needs the optional packages: {EXTRA}; missing {error.name}"
        ) from None
    return litert_torch, Interpreter, schema, flatbuffers


def convert_to_tflite(wrapper: torch.nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """The TFLite flatbuffer of the export wrapper (batch 1) with imgclf's metadata entries."""
    litert_torch, _, schema, flatbuffers = _modules()
    with tempfile.TemporaryDirectory(prefix="imgclf-tflite-") as folder:
        target = Path(folder) / "model.tflite"
        try:
            litert_torch.convert(wrapper.eval(), (example[:1],)).export(str(target))
        except Exception as error:  # the converter raises many kinds of errors for unsupported graphs
            raise ModelError(f"TFLite conversion failed: {str(error).splitlines()[0]}") from error
        model = schema.ModelT.InitFromPackedBuf(target.read_bytes(), 0)
    model.metadata = list(model.metadata or [])
    model.buffers = list(model.buffers or [])
    for key, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode("utf-8"), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = key, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(content: bytes) -> dict[str, str]:
    """The imgclf metadata entries of a TFLite flatbuffer."""
    _, _, schema, _ = _modules()
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    found = {}
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name.startswith("imgclf."):
            found[name] = bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8)).decode("utf-8")
    return found


def tflite_probabilities(content: bytes, images: np.ndarray) -> np.ndarray:
    """Run a TFLite model image by image (batch 1) with the LiteRT interpreter."""
    _, interpreter_class, _, _ = _modules()
    interpreter = interpreter_class(model_content=content)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    # the probabilities are the N×K output (a model with an `unknown` answer has a second, N)
    target = next(d for d in interpreter.get_output_details() if len(d["shape"]) == 2)
    rows = []
    for image in images:
        interpreter.set_tensor(source["index"], np.ascontiguousarray(image[None], dtype=np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(target["index"])[0].copy())
    return np.stack(rows)


def check_tflite(content: bytes, wrapper: torch.nn.Module, images: np.ndarray) -> float:
    """The largest probability difference between the TFLite model, run by the LiteRT interpreter,
    and PyTorch; a ModelError when it is over MAX_ABS_DIFF or the metadata is missing."""
    if "imgclf.model" not in read_tflite_metadata(content):
        raise ModelError("the TFLite model lost the imgclf metadata; nothing was written")
    expected = wrapper.answers(images)[0]
    difference = float(np.abs(tflite_probabilities(content, images) - expected).max())
    if not difference <= MAX_ABS_DIFF:
        raise ModelError(
            f"the LiteRT interpreter and PyTorch disagree: max |Δp| = {difference:.2e} "
            f"(limit {MAX_ABS_DIFF:.0e}); nothing was written"
        )
    return difference
