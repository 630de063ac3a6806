"""The service's routes: /predict, /explain, /health and /model. Each reads what it needs from
`request.app.state.serving` (a `Serving`, made once by `create_app`)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request

from imgclf.errors import UsageError
from imgclf.inference.explain import Explainer, explanation_png
from imgclf.inference.predictor import Predictor
from imgclf.serve.admission import LARGE_REQUEST_BYTES, Gate, HeldBodies, Pacing
from imgclf.serve.batching import MicroBatcher
from imgclf.serve.schemas import (
    PREDICT_ROUTE,
    ClassScore,
    ErrorBody,
    ExplainResponse,
    Health,
    ImageExplanation,
    ImagePrediction,
    LabelScore,
    PredictResponse,
)
from imgclf.serve.settings import ServeSettings
from imgclf.serve.uploads import prepare_upload, prepare_uploads, read_request_in_time, request_cost

router = APIRouter()


@dataclass
class Serving:
    """What the routes share: the model and its micro-batcher, the settings, the admission gates and
    budget, the decoding threads, and the explainer (None when an export is served)."""

    predictor: Predictor
    settings: ServeSettings
    batcher: MicroBatcher
    predict_gate: Gate
    explain_gate: Gate
    large_gate: Gate  # requests of large images: one at a time, in a thread of the lowest priority
    held: HeldBodies
    decoders: ThreadPoolExecutor
    large_decoders: ThreadPoolExecutor
    explainers: ThreadPoolExecutor
    explainer: Explainer | None
    pacing: Pacing
    explaining: threading.Lock = field(default_factory=threading.Lock)  # Grad-CAM hooks the network

    @property
    def gates(self) -> tuple[Gate, Gate, Gate]:
        return self.predict_gate, self.explain_gate, self.large_gate

    def close(self) -> None:
        for pool in (self.decoders, self.large_decoders, self.explainers):
            pool.shutdown(wait=False, cancel_futures=True)


def serving(request: Request) -> Serving:
    return request.app.state.serving


async def in_pool(pool: ThreadPoolExecutor, work: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(pool, work)


def check_count(blobs: list[bytes], settings: ServeSettings) -> None:
    if len(blobs) > settings.max_images:
        raise HTTPException(413, f"{len(blobs)} images; at most {settings.max_images} a request")


@router.post("/predict", **PREDICT_ROUTE)
async def predict(
    request: Request,
    top_k: int | None = Query(None, ge=1, le=1000, description="Classes per image (default: --top-k)."),
) -> PredictResponse:
    state = serving(request)
    settings, spec = state.settings, state.predictor.spec
    # the body is read before the route's gate (a slow one holds no slot) within the held budget
    state.predict_gate.refuse_if_full()
    with state.held.hold(request):
        blobs, names, top_k = await read_request_in_time(request, top_k, settings)
        check_count(blobs, settings)
        large = request_cost(blobs, spec, settings) > LARGE_REQUEST_BYTES
        gate, pool = (
            (state.large_gate, state.large_decoders) if large else (state.predict_gate, state.decoders)
        )
        async with gate.enter():
            arrays = await in_pool(pool, lambda: prepare_uploads(blobs, names, spec, settings))
            try:
                answers = await asyncio.wait_for(state.batcher.predict(np.stack(arrays)), settings.timeout_s)
            except TimeoutError:
                gate.turned_away += 1
                raise HTTPException(
                    503, "the model took too long; try again shortly", {"Retry-After": "1"}
                ) from None
    k = min(top_k or settings.default_top_k, len(state.predictor.classes))
    predictions = [image_prediction(state.predictor, name, row, k) for name, row in zip(names, answers)]
    return PredictResponse(predictions=predictions, backend=state.predictor.backend)


def image_prediction(predictor: Predictor, name: str, row: np.ndarray, k: int) -> ImagePrediction:
    """One image's answer from its row of the batcher's output (probabilities, similarity, distance)."""
    likeness = None if np.isnan(row[-1]) else row[-2:]
    result = predictor.top_classes(name, row[:-2], k, likeness)
    top = [
        ClassScore(label=label, name=display, probability=round(float(p), 6))
        for label, display, p in zip(result.labels, result.names, result.probabilities)
    ]
    present = None
    if result.present is not None:
        present = [
            LabelScore(label=label, name=display, probability=round(p, 6), threshold=round(t, 6))
            for label, display, p, t in zip(
                result.present, result.present_names, result.present_probabilities, result.thresholds
            )
        ]
    return ImagePrediction(
        image=name,
        label=result.label,
        labels=present,
        unknown=result.unknown,
        similarity=None if result.similarity is None else round(result.similarity, 6),
        distance=None if result.distance is None else round(result.distance, 6),
        top=top,
    )


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Where the model looked: a Grad-CAM heatmap per image",
    responses={
        409: {"model": ErrorBody, "description": "An exported model is served: no gradients to follow."},
        **{code: PREDICT_ROUTE["responses"][code] for code in (400, 401, 403, 408, 413, 415, 503)},
    },
    openapi_extra=PREDICT_ROUTE["openapi_extra"],
)
async def explain(
    request: Request,
    class_name: str | None = Query(None, alias="class", description="Explain this class, not the top-1."),
) -> ExplainResponse:
    state = serving(request)
    if state.explainer is None:
        raise HTTPException(
            409, "explanations need the PyTorch model: serve the model folder with --backend torch"
        )
    if class_name is not None and class_name not in state.predictor.classes:
        raise HTTPException(400, f"class {class_name!r} is not one of the model's classes")
    state.explain_gate.refuse_if_full()
    with state.held.hold(request):
        blobs, names, _ = await read_request_in_time(request, None, state.settings)
        check_count(blobs, state.settings)
        async with state.explain_gate.enter():
            work = lambda: explain_images(state, blobs, names, class_name)  # noqa: E731
            return ExplainResponse(explanations=await in_pool(state.explainers, work))


def explain_images(
    state: Serving, blobs: list[bytes], names: list[str], class_name: str | None
) -> list[ImageExplanation]:
    """Grad-CAM of each image, one explanation at a time and paced behind /predict."""
    settings, spec = state.settings, state.predictor.spec
    request_cost(blobs, spec, settings)
    found = []
    deadline = time.monotonic() + settings.decode_timeout_s
    for blob, name in zip(blobs, names):
        array = prepare_upload(blob, name, spec, settings, deadline)
        with state.explaining, state.pacing.turn():
            result = state.explainer.explain_prepared(name, array, class_name)
        picture = base64.b64encode(explanation_png(result)).decode("ascii")
        found.append(
            ImageExplanation(
                image=name,
                label=result.label,
                name=result.name,
                probability=round(result.probability, 6),
                peak=list(result.peak),
                heatmap_png=f"data:image/png;base64,{picture}",
                unknown=result.unknown,
            )
        )
    return found


@router.get("/health", response_model=Health, summary="Liveness and load")
async def health(request: Request) -> Health:
    state = serving(request)
    predict_gate, explain_gate, large_gate, held = (
        state.predict_gate,
        state.explain_gate,
        state.large_gate,
        state.held,
    )
    turned_away = sum(gate.turned_away for gate in state.gates)
    busy = any(gate.full for gate in state.gates) or held.full
    return Health(
        status="overloaded" if busy else "ok",
        ready=not (predict_gate.full or held.full),
        predict_active=predict_gate.active,
        predict_waiting=predict_gate.waiting,
        large_active=large_gate.active,
        large_waiting=large_gate.waiting,
        explain_active=explain_gate.active,
        explain_waiting=explain_gate.waiting,
        held_mb=round(held.held / 1e6, 1),
        turned_away=turned_away + held.turned_away,
    )


@router.get("/model", summary="Classes, preprocessing, training metrics and serving settings")
async def model(request: Request) -> dict[str, Any]:
    state = serving(request)
    return describe_model(state.predictor, state.settings, state.batcher)


def serving_explainer(predictor: Predictor) -> Explainer | None:
    """Grad-CAM for POST /explain when the PyTorch model is served (an export has no gradients)."""
    if predictor.model is None:
        return None
    try:
        return Explainer(predictor)
    except UsageError:  # a model without spatial feature maps (an MLP)
        return None


def describe_model(predictor: Predictor, settings: ServeSettings, batcher: MicroBatcher) -> dict[str, Any]:
    """What GET /model answers: classes, preprocessing, training metrics, serving settings and counts."""
    info, stats = predictor.info, batcher.stats
    return {
        "architecture": info.architecture,
        "classes": info.classes,
        "display_names": predictor.names,
        "preprocessing": predictor.spec.to_dict(),
        "metrics": info.metrics,
        "dataset": {k: v for k, v in info.dataset.items() if k != "source"},
        "created": info.created,
        "backend": predictor.backend,
        "tta": predictor.tta,
        "explain": predictor.model is not None,
        "calibration": info.calibration,
        "unknown": predictor.unknown_rule.describe() if predictor.unknown_rule is not None else None,
        "task": "multi-label" if predictor.multi_label else "single-label",
        **({"thresholds": dict(zip(info.classes, info.thresholds))} if predictor.multi_label else {}),
        "serving": {
            **asdict(settings),
            "batches": stats.batches,
            "images": stats.images,
            "mean_batch": round(stats.mean, 3),
            "largest_batch": stats.largest,
        },
    }
