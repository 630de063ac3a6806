"""`export_model`: the steps every export format shares, then the format's own writer.

A saved model becomes an ONNX graph (normalization and softmax inside, imgclf's metadata in it),
checked in ONNX Runtime against PyTorch, quantized to int8 and checked against the float model when
asked; then the format chosen (`imgclf.export.formats`, one module each) writes and checks its own
bytes, and the file is written atomically, only once every check has passed.

The exported graph has one input and one output (three for a model with an `unknown` answer):

- input `image`: float32, N×C×H×W, the image resized to the model's size by its preprocessing spec
  (see `prepare_image`), channels RGB (or one grey channel), pixel values divided by 255 (0.0–1.0);
- output `probabilities`: float32, N×K, softmax over the classes in the order of `imgclf.classes`,
  of the logits divided by the model's calibrated temperature (`imgclf.temperature`): the
  probabilities `imgclf predict` answers, the ones the `unknown` rule's confidence is set on;
  for a multi-label model (`imgclf.task` "multi-label") one sigmoid per label, each label answered
  when its probability reaches its threshold in `imgclf.thresholds` (JSON: label → threshold);
- outputs `similarity` and `distance` (models trained or calibrated with --min-precision): float32,
  N each, the image's likeness to the training images (`imgclf.inference.unknown`).

The per-channel mean/std normalization and the softmax are inside the graph, so an application only
resizes, scales to 0–1 and transposes. The model's metadata (`metadata_props`) carries everything
else: `imgclf.classes`, `imgclf.display_names`, `imgclf.preprocessing` (JSON), `imgclf.input` (this
contract in words), `imgclf.model` (the full imgclf.json), `imgclf.weights_sha256` and, for a model
with an `unknown` answer, `imgclf.unknown`: answer "unknown" when the top probability is below
`confidence`, the similarity below `similarity` or the distance above `distance`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.artifact import ModelInfo, load_artifact, resolve_artifact_path
from imgclf.data.preprocess import PreprocessSpec
from imgclf.errors import ImgclfError, ModelError, UsageError
from imgclf.export.check_data import CheckImages, given_images, training_split
from imgclf.export.formats import FORMATS
from imgclf.export.quantize import (
    CALIBRATION_IMAGES,
    CHECK_IMAGES,
    MAX_ACCURACY_DROP,
    MIN_AGREEMENT,
    QuantizationCheck,
    check_int8,
    quantize_int8,
)
from imgclf.inference.onnx_runtime import (
    DISTANCE_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    SIMILARITY_NAME,
    TEMPERATURE_KEY,
    create_session,
    run_outputs,
    weights_digest,
)
from imgclf.inference.unknown import UNKNOWN, FeatureBank, UnknownRule, with_features
from imgclf.io import replace_dir_atomic, write_atomic

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the torch.export-based exporter emits opset 18 and later
MAX_ABS_DIFF = 1e-4
QUANTIZATIONS = ("none", "int8", "auto")
INPUT_CONTRACT = (
    "image: float32 N×C×H×W, resized to H×W by the preprocessing spec (resize policy and interpolation), "
    "channels RGB (C=3) or grey (C=1), values = uint8 pixel / 255 (0.0–1.0); mean/std normalization "
    "happens inside the graph. Output probabilities: float32 N×K, softmax (of the logits / "
    "imgclf.temperature, the calibrated probabilities), classes in imgclf.classes order."
)


class ExportWrapper(nn.Module):
    """The trained network between its normalization and a softmax: what the ONNX graph computes.

    With a feature bank (a model trained or calibrated with --min-precision) it also computes each
    image's similarity to and distance from the training images, two more outputs (`output_names`)."""

    def __init__(
        self,
        model: nn.Module,
        spec: PreprocessSpec,
        bank: FeatureBank | None = None,
        example: torch.Tensor | None = None,
        multi_label: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.multi_label = multi_label  # one sigmoid per label instead of the softmax
        # the model's calibration: its probabilities are softmax(logits / T), as Predictor answers
        self.temperature = 1.0 if multi_label else float(temperature)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = None
        if bank is not None:
            assert example is not None, "a feature bank is exported with an example input"
            with torch.no_grad():
                self.classes = model.eval()((example - self.mean) / self.std).shape[1]
            model = with_features(model, (example - self.mean) / self.std)
        self.model = model
        self.bank = bank

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME] if self.bank is None else [OUTPUT_NAME, SIMILARITY_NAME, DISTANCE_NAME]

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        output = self.model((image - self.mean) / self.std)
        if self.bank is None:
            return self.activate(output)
        logits, features = output[:, : self.classes], output[:, self.classes :]
        likeness = self.bank(features)
        return self.activate(logits), likeness[:, 0], likeness[:, 1]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return torch.sigmoid(logits.float())
        if self.temperature != 1.0:
            return torch.softmax(logits.float() / self.temperature, dim=1)
        return torch.softmax(logits.float(), dim=1)

    def answers(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output, in `output_names` order, of prepared float images (N×C×H×W)."""
        with torch.no_grad():
            output = self(torch.from_numpy(images))
        return [o.numpy() for o in (output if isinstance(output, tuple) else (output,))]


@dataclass
class ExportResult:
    """What `export_model` wrote and how closely ONNX Runtime matched PyTorch."""

    path: Path
    opset: int
    dynamic_batch: bool
    check_images: int
    check_source: str
    max_abs_diff: float
    top1_agreement: float
    size_bytes: int
    format: str = "onnx"
    quantize: str = "none"
    kind: str = ""  # what the format says the file is ("opset 18", "ORT format, opset 18", "TFLite")
    batch: str = ""  # "dynamic", "fixed at N", or the format's own ("1")
    check_lines: list[str] = field(default_factory=list)  # the format's own checks, a line each
    float_size_bytes: int = 0  # the float ONNX graph's size, for comparison
    model_size_bytes: int = 0  # a folder format: the model file's size in it (size_bytes: the folder's)
    quantization: QuantizationCheck | None = None  # int8: how it compares with the float model
    ort_max_abs_diff: float | None = None  # ORT format: largest difference from the ONNX graph
    tflite_max_abs_diff: float | None = None  # TFLite: largest difference from PyTorch


@dataclass
class ExportJob:
    """What a format's writer starts from: the float (or int8) ONNX graph that passed its checks, the
    network that made it, the check images, and the metadata every export carries."""

    payload: bytes  # the checked ONNX graph (int8 when asked)
    wrapper: ExportWrapper
    example: torch.Tensor
    images: np.ndarray  # the check batch (prepared float images)
    fixed_batch: int | None
    metadata: dict[str, str]
    # int8: checks another file of the same graph against the float model (raises when it fails)
    recheck_int8: Callable[[bytes], QuantizationCheck] | None = None


def export_model(
    model_path: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    check_images: Any = None,
    check_count: int = 16,
    format: str = "onnx",
    quantize: str | None = None,
    calibration_images: Any = None,
    calibration_count: int = CALIBRATION_IMAGES,
) -> ExportResult:
    """Export a saved model to ONNX, then check ONNX Runtime against PyTorch on real images.

    Args:
        model_path: the artifact folder (or a run folder holding model/).
        out: the .onnx file to write (default: model.onnx inside the artifact folder, where
            `imgclf predict` and `imgclf serve` find it).
        opset: ONNX opset version (18 or later).
        dynamic_batch: a free batch dimension; otherwise the batch is fixed at `batch_size`.
        check_images: files, folders or globs for the check batch; default: images of the data the
            model was trained on, when they are still there.
        check_count: how many images the check uses.
        format: "onnx", "ort" (ONNX Runtime's format for ORT Mobile, loaded back and compared),
            "tflite", or "web" (a folder: the phone app, `imgclf.export.formats.web`).
        quantize: "none", "int8" (static quantization calibrated on `calibration_count` training
            images or on `calibration_images`, then checked against the float model on the
            validation images or on `check_images`; see `imgclf.export.quantize`), or "auto" (int8
            where that check passes, else the float model, and a line says why); default: the
            format's own ("auto" for web, "none" for the others).

    Raises ModelError when export fails or a check fails: the float graph more than 1e-4 from
    PyTorch, int8 under 99% top-1 agreement or over 1 point of accuracy lost, the ORT format more
    than 1e-4 from the ONNX graph. Nothing is written then.
    """
    declared = FORMATS.entry(format).declared
    quantize = quantize or declared.get("QUANTIZE", "none")
    writer = check_export_options(format, quantize, opset, batch_size, dynamic_batch)
    artifact_dir = resolve_artifact_path(model_path)
    out_path = (
        Path(out).expanduser() if out is not None else artifact_dir / default_file_name(format, quantize)
    )
    folder = bool(declared.get("FOLDER"))
    suffix = declared["SUFFIX"]
    if folder:
        check_out_folder(out_path, writer)
    elif out_path.suffix.lower() != suffix:
        raise UsageError(f"--out must end in {suffix} for --format {format}, got {out_path.name}")
    model, info = load_artifact(artifact_dir, device="cpu")
    fixed = None if dynamic_batch else batch_size
    images, check_source = load_check_batch(info, check_images, check_count)
    wrapper, example = export_wrapper(model, info, artifact_dir, images, example_batch=fixed or 2)
    # the checks run on the bytes about to be written, so a file on disk has always passed them
    payload = _with_metadata(
        _export_graph(wrapper, example, opset, dynamic_batch), info, weights_digest(artifact_dir)
    )
    max_abs_diff, top1_agreement = check_graph(payload, wrapper, images, fixed)
    result = ExportResult(
        path=out_path,
        opset=opset,
        dynamic_batch=dynamic_batch,
        check_images=len(images),
        check_source=check_source,
        max_abs_diff=max_abs_diff,
        top1_agreement=top1_agreement,
        size_bytes=len(payload),
        format=format,
        quantize=quantize,
        float_size_bytes=len(payload),
        batch="dynamic" if dynamic_batch else f"fixed at {batch_size}",
    )
    job = ExportJob(
        payload, wrapper, example, images, fixed, export_metadata(info, weights_digest(artifact_dir))
    )
    if quantize == "int8":
        quantize_job(job, result, info, artifact_dir, check_images, calibration_images, calibration_count)
    elif quantize == "auto":
        float_payload = job.payload
        try:
            quantize_job(job, result, info, artifact_dir, check_images, calibration_images, calibration_count)
            result.quantize = "int8"
        except ImgclfError as error:  # the check failed, or its images are not there: the float model
            job.payload, job.recheck_int8, result.quantization = float_payload, None, None
            result.quantize = "none"
            result.check_lines.append(f"int8 not used, the float model is: {error}")
    payload = writer.write(job, result)  # the format's own bytes (a folder's files), checked
    if folder:
        result.size_bytes = sum(len(content) for content in payload.values())
        replace_dir_atomic(out_path, lambda tmp: _write_files(tmp, payload))
    else:
        result.size_bytes = len(payload)
        write_atomic(out_path, lambda tmp: tmp.write_bytes(payload))
    logger.debug("exported %s (max |Δp| %.2e on %d images)", out_path, max_abs_diff, len(images))
    return result


def check_out_folder(path: Path, writer: Any) -> None:
    """A folder format's --out: a new folder, an empty one, or one an earlier export of the same
    format wrote (the format's `owns(folder)` says so), which is replaced whole; anything else is
    refused, so that a mistyped --out never deletes a user's folder."""
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"--out {path} is a file; give a folder for the app")
    if any(path.iterdir()) and not writer.owns(path):
        raise UsageError(
            f"--out {path} is a folder with other files in it; give a new or empty folder (an app "
            "imgclf exported there before is replaced)"
        )


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def check_export_options(format: str, quantize: str, opset: int, batch_size: int, dynamic_batch: bool) -> Any:
    """The format's module, once the options are checked (its own `check_options` too); a UsageError
    before any work otherwise."""
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset} is too old; imgclf exports opset {MIN_OPSET} or later")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if quantize not in QUANTIZATIONS:
        raise UsageError(f"--quantize is one of {', '.join(QUANTIZATIONS)}")
    writer = FORMATS.load(format)
    if hasattr(writer, "check_options"):
        writer.check_options(quantize=quantize, dynamic_batch=dynamic_batch)
    return writer


def export_wrapper(
    model: nn.Module, info: ModelInfo, artifact_dir: Path, images: np.ndarray, example_batch: int
) -> tuple[ExportWrapper, torch.Tensor]:
    """The network between its normalization and softmax (with the feature bank's outputs when the
    model has one), and the example batch it is exported with (check images where there are enough)."""
    spec = info.preprocessing
    example = torch.from_numpy(images[:example_batch]) if len(images) >= example_batch else None
    if example is None or example.shape[0] != example_batch:
        example = torch.rand(example_batch, spec.channels, spec.height, spec.width)
    wrapper = ExportWrapper(
        model, spec, FeatureBank.load(artifact_dir), example, info.multi_label, graph_temperature(info)
    ).eval()
    return wrapper, example


def check_graph(
    payload: bytes, wrapper: ExportWrapper, images: np.ndarray, fixed: int | None
) -> tuple[float, float]:
    """ONNX Runtime against PyTorch on the check images: (largest difference, top-1 agreement); a
    ModelError when the difference is over MAX_ABS_DIFF."""
    session = create_session(payload)
    expected = wrapper.answers(images)
    got = run_outputs(session, images, fixed, wrapper.output_names)
    # probabilities and similarity are 0–1; a distance is compared relative to its size
    max_abs_diff = max(
        float(np.abs(g - e).max()) / (max(1.0, float(np.abs(e).max())) if name == DISTANCE_NAME else 1.0)
        for name, g, e in zip(wrapper.output_names, got, expected)
    )
    if not max_abs_diff < MAX_ABS_DIFF:
        raise ModelError(
            f"ONNX Runtime and PyTorch disagree: max |Δ| = {max_abs_diff:.2e} (limit {MAX_ABS_DIFF:.0e}); "
            "nothing was written"
        )
    return max_abs_diff, float(np.mean(got[0].argmax(1) == expected[0].argmax(1)))


def quantize_job(
    job: ExportJob,
    result: ExportResult,
    info: ModelInfo,
    artifact_dir: Path,
    check_images: Any,
    calibration_images: Any,
    calibration_count: int,
) -> None:
    """Replace the job's float graph by its int8 quantization (calibrated on training images), checked
    against the float model on validation images; the same check is left on the job for formats
    that convert the int8 graph again (`recheck_int8`)."""
    calibration, check = _int8_images(info, artifact_dir, check_images, calibration_images, calibration_count)
    rule = UnknownRule.from_calibration(info.calibration)
    thresholds = (info.thresholds or [0.5] * len(info.classes)) if info.multi_label else None
    how = f"int8 static quantization (QDQ, per-channel weights), calibrated on {calibration.source}"
    float_payload, fixed = job.payload, job.fixed_batch
    int8 = quantize_int8(float_payload, calibration, fixed)
    job.payload = _with_metadata(int8, info, weights_digest(artifact_dir), {"imgclf.quantization": how})

    def recheck_int8(candidate: bytes) -> QuantizationCheck:
        checked = check_int8(float_payload, candidate, check, len(calibration), fixed, rule, thresholds)
        return _passed(checked)

    job.recheck_int8 = recheck_int8
    result.quantization = recheck_int8(job.payload)


def default_file_name(format: str, quantize: str) -> str:
    """model.onnx (found by predict and serve), model.int8.onnx, model.ort, model.int8.ort …: the
    format's suffix; a folder format's own folder name (web)."""
    folder = FORMATS.entry(format).declared.get("FOLDER")
    if folder:
        return str(folder)
    return f"model{'.int8' if quantize == 'int8' else ''}{FORMATS.entry(format).declared['SUFFIX']}"


def _int8_images(
    info: ModelInfo, artifact_dir: Path, check_images: Any, calibration_images: Any, calibration_count: int
) -> tuple[CheckImages, CheckImages]:
    """The images int8 is calibrated on (training images) and checked on (validation images)."""
    if calibration_images is not None:
        calibration = given_images(info, calibration_images, calibration_count, "--calibration-images")
    else:
        calibration = training_split(info, artifact_dir, "train", calibration_count)
    if check_images is not None:
        check = given_images(info, check_images, CHECK_IMAGES, "--check-images")
    else:
        check = training_split(info, artifact_dir, "val", CHECK_IMAGES)
    return calibration, check


def _passed(checked: QuantizationCheck) -> QuantizationCheck:
    if not checked.passed:
        raise ModelError(
            f"the int8 model does not answer as the float model does: {checked.describe()} (needs "
            f"{MIN_AGREEMENT:.0%} agreement and at most {MAX_ACCURACY_DROP * 100:.0f} point of accuracy "
            "lost); nothing was written. Use --quantize none, or calibrate on more images "
            "(--calibration-count)"
        )
    return checked


def graph_temperature(info: ModelInfo) -> float:
    """The temperature the graph's softmax applies: the model's calibration (single-label models)."""
    if info.multi_label:
        return 1.0
    return float((info.calibration or {}).get("temperature", 1.0))


def export_metadata(
    info: ModelInfo, weights_sha256: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """What every export carries about itself: classes, display names, the preprocessing, the input
    contract in words, the full imgclf.json and the digest of the weights it came from."""
    return {
        "imgclf.classes": json.dumps(info.classes, ensure_ascii=False),
        **(
            {
                "imgclf.task": "multi-label",
                "imgclf.thresholds": json.dumps(dict(zip(info.classes, info.thresholds)), ensure_ascii=False),
            }
            if info.multi_label
            else {}
        ),
        "imgclf.display_names": json.dumps(info.display_names or info.classes, ensure_ascii=False),
        "imgclf.preprocessing": json.dumps(info.preprocessing.to_dict()),
        "imgclf.input": INPUT_CONTRACT,
        "imgclf.model": json.dumps(without_local_paths(info.to_dict()), ensure_ascii=False),
        "imgclf.weights_sha256": weights_sha256,
        # the calibrated probabilities are the graph's own: applications use them as they come
        TEMPERATURE_KEY: repr(graph_temperature(info)),
        **({"imgclf.unknown": json.dumps(unknown_contract(info))} if unknown_contract(info) else {}),
        **(extra or {}),
    }


# Where imgclf.json names files on the training machine: an export that travels to a phone or another
# company carries their names only, never the folders they were in.
LOCAL_PATHS = (
    ("training", "config", "data", "source"),
    ("training", "config", "data", "manifest"),
    ("training", "config", "data", "label_map"),
    ("training", "config", "model", "weights"),
    ("training", "config", "output", "project"),
    ("training", "pretrained"),
    ("dataset", "source"),
)


def without_local_paths(values: dict[str, Any]) -> dict[str, Any]:
    """imgclf.json's content with each local path reduced to its last part (a copy)."""
    values = json.loads(json.dumps(values))
    for keys in LOCAL_PATHS:
        node = values
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str) and node[keys[-1]]:
            node[keys[-1]] = Path(node[keys[-1]]).name
    return values


def unknown_contract(info: ModelInfo) -> dict[str, Any] | None:
    """The `unknown` rule as an application applies it to the graph's outputs; None without one."""
    rule = UnknownRule.from_calibration(info.calibration)
    if rule is None:
        return None
    return {
        "answer": UNKNOWN,
        "when": "probabilities.max() < confidence, or similarity < similarity, or distance > distance",
        "confidence": rule.confidence,
        "similarity": rule.similarity,
        "distance": rule.distance,
        "min_precision": rule.min_precision,
    }


def _with_metadata(
    onnx_bytes: bytes, info: ModelInfo, weights_sha256: str, extra: dict[str, str] | None = None
) -> bytes:
    """The graph with `export_metadata` in its metadata_props, and a doc string."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    proto.doc_string = f"imgclf image classifier: {len(info.classes)} classes. {INPUT_CONTRACT}"
    del proto.metadata_props[:]
    for key, value in export_metadata(info, weights_sha256, extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _export_graph(wrapper: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> bytes:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    buffer = io.BytesIO()
    # The exporter prints its progress on stdout; imgclf's own output says what happened.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=wrapper.output_names,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
            )
        except Exception as error:  # the exporter raises many types; all mean "this graph did not export"
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"ONNX export failed: {message}") from error
    return buffer.getvalue()


def load_check_batch(info: ModelInfo, check_images: Any, count: int) -> tuple[np.ndarray, str]:
    """Prepared float images (N×C×H×W, 0–1) for the export check, and where they came from."""
    from imgclf.data.preprocess import prepare_image

    spec = info.preprocessing
    arrays: list[np.ndarray] = []
    if check_images is not None:
        return given_images(info, check_images, count, "--check-images").images, "the given images"
    source = "random images (the training data was not found; give --check-images for real ones)"
    data = info.dataset.get("source")
    if data and Path(data).exists():
        try:
            from imgclf.data.sources import scan_source

            image_set = scan_source(data)
            picks = np.linspace(0, len(image_set) - 1, num=min(count, len(image_set))).round()
            for index in dict.fromkeys(int(i) for i in picks):
                with contextlib.suppress(Exception):
                    arrays.append(prepare_image(image_set.reader.open(image_set.keys[index]), spec))
            if arrays:
                source = f"{len(arrays)} training images from {data}"
        except Exception as error:  # the check falls back to random input; say why
            logger.warning("export check: cannot read the training data (%s)", error)
    if not arrays:
        rng = np.random.default_rng(0)
        arrays = list(rng.integers(0, 256, (count, spec.height, spec.width, spec.channels), dtype=np.uint8))
    batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray(batch), source
