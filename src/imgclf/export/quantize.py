"""int8 ONNX: ONNX Runtime static quantization (QDQ format, per-channel weights), calibrated on
training images and checked against the float model before anything is written.

The check runs both models on validation images (or the images the user gives): the top-1 answers
must agree on at least MIN_AGREEMENT of them and, where the images have labels, the int8 model may
lose at most MAX_ACCURACY_DROP of accuracy. Users of other tools meet int8 exports that load but
answer wrongly; this one answers as the float model does, or is not written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.errors import ModelError
from imgclf.export.check_data import CheckImages
from imgclf.inference.onnx_runtime import (
    DISTANCE_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    SIMILARITY_NAME,
    create_session,
    session_scores,
)
from imgclf.inference.unknown import UnknownRule

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01
CALIBRATION_IMAGES = 256  # training images the activation ranges are calibrated on
CHECK_IMAGES = 1000  # validation images, at most, the int8 model is checked on
CALIBRATION_BATCH = 16


@dataclass
class QuantizationCheck:
    """How the int8 model compares with the float model on the check images."""

    images: int
    source: str
    agreement: float  # share of images with the same answer (top-1 class, or unknown)
    float_accuracy: float | None  # None without labels
    int8_accuracy: float | None
    calibration_images: int
    unknown_included: bool = False  # the answers compared include `unknown` (the model's rule)
    multi_label: bool = False  # the answers compared are label sets (a multi-label model)

    @property
    def passed(self) -> bool:
        if self.agreement < MIN_AGREEMENT:
            return False
        if self.float_accuracy is None or self.int8_accuracy is None:
            return True
        return self.float_accuracy - self.int8_accuracy <= MAX_ACCURACY_DROP

    def describe(self) -> str:
        what = "answer agreement (unknown included)" if self.unknown_included else "top-1 agreement"
        if self.multi_label:
            what = "label-set agreement (the labels at their thresholds)"
        text = f"{what} {self.agreement:.1%} on {self.source}"
        if self.float_accuracy is not None and self.int8_accuracy is not None:
            text += f", accuracy float {self.float_accuracy:.4f} vs int8 {self.int8_accuracy:.4f}"
        return text


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over prepared images, a batch at a time."""

    def __init__(self, images: np.ndarray, fixed_batch: int | None) -> None:
        size = fixed_batch or CALIBRATION_BATCH
        stop = len(images) - len(images) % size if fixed_batch else len(images)  # fixed batches are whole
        self.batches = iter([images[i : i + size] for i in range(0, max(stop, 1), size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(float_model: bytes, calibration: CheckImages, fixed_batch: int | None = None) -> bytes:
    """The float ONNX graph quantized to int8: QDQ format, int8 per-channel weights, uint8
    activations whose ranges come from the calibration images (min-max)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as folder:
        source, prepared, target = (Path(folder) / name for name in ("float.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(float_model)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:  # symbolic shape inference and graph clean-up, as ONNX Runtime recommends
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            except Exception as error:  # a graph the pre-processing cannot handle is quantized as it is
                logger.debug("int8 pre-processing skipped: %s", error)
                prepared = source
            try:
                quantize_static(
                    str(prepared),
                    str(target),
                    _Calibration(calibration.images, fixed_batch),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=_float_nodes(prepared),
                )
            except Exception as error:
                raise ModelError(f"int8 quantization failed: {str(error).splitlines()[0]}") from error
        return target.read_bytes()


def _float_nodes(path: Path) -> list[str]:
    """Nodes that stay float. The softmax (or sigmoid) at the output: quantized to 1/255 steps, a
    small probability becomes 0, and the loss and calibration measured on the answers would be
    wrong. The similarity to the training images (a model with an `unknown` answer): a cosine
    similarity over a bank of features that int8 steps would blur."""
    import onnx

    graph = onnx.load(str(path)).graph
    # the output's softmax, or a multi-label model's sigmoids
    keep = [
        node.name
        for node in graph.node
        if node.op_type == "Softmax" or (node.op_type == "Sigmoid" and OUTPUT_NAME in node.output)
    ]
    if SIMILARITY_NAME in {output.name for output in graph.output}:
        likeness = _ancestors(graph, SIMILARITY_NAME) | _ancestors(graph, DISTANCE_NAME)
        keep += [n.name for n in graph.node if id(n) in likeness - _ancestors(graph, OUTPUT_NAME)]
    return keep


def _ancestors(graph, output: str) -> set[int]:
    """ids of the nodes that the named output depends on."""
    producer = {name: node for node in graph.node for name in node.output}
    found: set[int] = set()
    pending = [output]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and id(node) not in found:
            found.add(id(node))
            pending.extend(node.input)
    return found


def check_int8(
    float_model: bytes,
    int8_model: bytes,
    check: CheckImages,
    calibration_images: int,
    fixed_batch: int | None = None,
    rule: UnknownRule | None = None,
    thresholds: Sequence[float] | None = None,
) -> QuantizationCheck:
    """Run the float and the int8 model on the check images and compare their answers (`unknown`
    being one, with the model's `rule`; for a multi-label model, with its `thresholds`, an image's
    answer is its set of labels)."""
    float_probabilities, float_similarity = answers(float_model, check.images, fixed_batch)
    int8_probabilities, int8_similarity = answers(int8_model, check.images, fixed_batch)
    if thresholds is not None:
        cut = np.asarray(thresholds, dtype=np.float32)[None, :]
        same = ((float_probabilities >= cut) == (int8_probabilities >= cut)).all(1)
        return QuantizationCheck(
            images=len(check),
            source=check.source,
            agreement=float(same.mean()),
            float_accuracy=None,
            int8_accuracy=None,
            calibration_images=calibration_images,
            unknown_included=False,
            multi_label=True,
        )
    float_top, int8_top = float_probabilities.argmax(1), int8_probabilities.argmax(1)
    float_answer, int8_answer = float_top.copy(), int8_top.copy()
    if rule is not None:
        float_answer[rule.mask(float_probabilities, float_similarity)] = -1
        int8_answer[rule.mask(int8_probabilities, int8_similarity)] = -1
    float_accuracy = int8_accuracy = None
    if check.labels is not None and (check.labels >= 0).any():
        known = check.labels >= 0
        float_accuracy = float((float_top[known] == check.labels[known]).mean())
        int8_accuracy = float((int8_top[known] == check.labels[known]).mean())
    return QuantizationCheck(
        images=len(check),
        source=check.source,
        agreement=float((float_answer == int8_answer).mean()),
        float_accuracy=float_accuracy,
        int8_accuracy=int8_accuracy,
        calibration_images=calibration_images,
        unknown_included=rule is not None,
    )


def answers(
    model: bytes, images: np.ndarray, fixed_batch: int | None = None, batch: int = 64
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities and, when the graph has them, the likeness to the training images (N×2:
    similarity, distance)."""
    session = create_session(model)
    step = fixed_batch or batch
    parts = [session_scores(session, images[i : i + step], fixed_batch) for i in range(0, len(images), step)]
    likeness = None if parts[0][1] is None else np.concatenate([part[1] for part in parts])
    return np.concatenate([part[0] for part in parts]), likeness


def probabilities(
    model: bytes, images: np.ndarray, fixed_batch: int | None = None, batch: int = 64
) -> np.ndarray:
    """Class probabilities of an ONNX (or ORT-format) model on prepared float images, batch by batch
    (`fixed_batch`: the model's own batch size, when it has one)."""
    return answers(model, images, fixed_batch, batch)[0]
