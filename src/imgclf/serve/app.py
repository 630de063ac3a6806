"""The HTTP prediction service: FastAPI app over a `Predictor`, with micro-batching and a web page.

Endpoints: `POST /predict` (multipart files or JSON with base64 images), `GET /health`,
`GET /model`, `GET /` (the web page), `GET /docs` (OpenAPI docs, served from the package: no CDN).
Bad input is answered with a JSON error and never stops the server: a body over the size limit gets
413, an unreadable, truncated or over-large image 400, a missing or wrong field 422.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.data.decode import (
    UPLOAD_FORMATS,
    DecodeTimeout,
    ImageDecodeError,
    ImageFormatError,
    decode_cost,
    decode_image,
)
from imgclf.data.preprocess import PreprocessSpec, prepare_image
from imgclf.errors import UsageError
from imgclf.inference.explain import Explainer, explanation_png
from imgclf.inference.predictor import Predictor
from imgclf.serve.access import Access, AccessGuard, reply
from imgclf.serve.batching import MicroBatcher

logger = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """Limits and batching of the service (the `imgclf serve` flags)."""

    max_batch: int = 32
    batch_wait_ms: float = 2.0
    max_body_mb: float = 20.0
    max_pixels: int = 40_000_000
    # the memory one image may take decoded at full size (a JPEG counts at its draft-reduced size):
    # a 0.2 MB PNG can claim 6320×6320 RGBA, 152 MiB, before any resize
    max_decode_mb: float = 100.0
    # pixels of all the images of one request, read from their headers before any is decoded: the
    # decoding time one request may cost (16 phone photos of 12 MP; 5 images at the per-image limit)
    max_request_pixels: int = 200_000_000
    max_images: int = 32
    default_top_k: int = 5
    # Admission: requests of a route in progress at once, and waiting beyond those; more get 503 with
    # Retry-After (never an unbounded queue). /explain (Grad-CAM, seconds each) has its own, smaller
    # gate and its own thread, so a flood of it cannot starve /predict.
    max_active: int = field(default_factory=lambda: 2 * (os.cpu_count() or 1))
    # request bodies being read or waiting for their answer, together (each at its Content-Length)
    max_held_mb: float = 256.0
    max_waiting: int | None = None  # None: sized from the model's speed (`sized`), else 64
    explain_active: int = 1
    explain_waiting: int = 4
    # request headers slower than this close the connection; a body slower than this gets 408 (slowloris)
    read_timeout_s: float = 20.0
    timeout_s: float = 60.0  # a request that waited and ran longer than this gets 503
    # decoding one request's images may take this long; past it the request gets 413 and its thread
    # is free within one 64 KiB block of input (a file whose decoding is slow by design)
    decode_timeout_s: float = 10.0

    def sized(self, images_per_second: float) -> tuple[ServeSettings, str]:
        """These settings with `max_waiting` sized from the model's measured speed, and the line
        that says so: no more requests wait than the model answers in a quarter of the timeout
        (one image each), between 8 and 256, so that a request turned away is told at once
        instead of after the timeout."""
        if self.max_waiting is not None:
            return self, f"/predict: {self.max_active} at once, {self.max_waiting} waiting (--max-waiting)"
        waiting = int(min(256, max(8, images_per_second * self.timeout_s / 4)))
        line = (
            f"/predict: {self.max_active} at once (2 per core), {waiting} waiting (what the model answers, "
            f"at {images_per_second:,.0f} images/s, in a quarter of --timeout {self.timeout_s:g} s; "
            "--max-waiting sets it)"
        )
        return replace(self, max_waiting=waiting), line


# --------------------------------------------------------------------------------------------------
# request and response bodies (they make the OpenAPI schema)
# --------------------------------------------------------------------------------------------------
class PredictJSON(BaseModel):
    """JSON body of POST /predict."""

    images: list[str] = Field(
        min_length=1,
        description="Images as base64 strings (a data: URL prefix, data:image/png;base64, is allowed).",
    )
    names: list[str] | None = Field(None, description="Optional names echoed back, one per image.")
    top_k: int | None = Field(None, ge=1, le=1000, description="Classes per image (overrides the query).")


class ClassScore(BaseModel):
    label: str = Field(description="Class name, as in the training data.")
    name: str = Field(description="Display name (from the label map, or the class name).")
    probability: float


class LabelScore(BaseModel):
    label: str = Field(description="Label name, as in the training data.")
    name: str = Field(description="Display name (from the label map, or the label name).")
    probability: float
    threshold: float = Field(
        description="The label's threshold, chosen on validation; it is answered at or above it."
    )


class ImagePrediction(BaseModel):
    image: str = Field(description="The file name, or the given name, or image-N.")
    label: str = Field(
        description="The answer: the top class, or `unknown` when the model's unknown rule says so "
        "(models trained or calibrated with --min-precision); for a multi-label model its labels "
        "joined by `|` (empty: none of them)."
    )
    labels: list[LabelScore] | None = Field(
        None,
        description="Multi-label models: every label at or above its threshold, most likely first "
        "(empty: none of them); null for a single-label model.",
    )
    unknown: str | None = Field(None, description="Why the answer is `unknown`; null when it is a class.")
    similarity: float | None = Field(
        None, description="Similarity to the nearest training images (models with an unknown rule)."
    )
    distance: float | None = Field(
        None, description="Distance from the nearest training images (models with an unknown rule)."
    )
    top: list[ClassScore] = Field(description="The top classes, most likely first (the best guesses).")


class PredictResponse(BaseModel):
    predictions: list[ImagePrediction]
    backend: str


class ImageExplanation(BaseModel):
    image: str = Field(description="The file name, or the given name, or image-N.")
    label: str = Field(description="The class explained: the top-1 class, or the one asked for.")
    name: str
    probability: float
    peak: list[int] = Field(description="[row, column] of the heatmap's maximum, in model input pixels.")
    heatmap_png: str = Field(description="data:image/png;base64 URL: the image and its Grad-CAM heatmap.")
    unknown: str | None = Field(
        None, description="Why the model's answer for the image is `unknown` (models with an unknown rule)."
    )


class ExplainResponse(BaseModel):
    explanations: list[ImageExplanation]


class Health(BaseModel):
    status: str = Field(description="ok, or overloaded while a route turns requests away")
    ready: bool = Field(
        True, description="false while /predict's queue, or the memory for request bodies, is full"
    )
    predict_active: int = 0
    predict_waiting: int = 0
    large_active: int = Field(0, description="requests of large images decoding (their own lane)")
    large_waiting: int = 0
    explain_active: int = 0
    explain_waiting: int = 0
    held_mb: float = Field(0.0, description="MB of request bodies being read or waiting for an answer")
    turned_away: int = Field(0, description="requests answered 503 since the start")


# the share of the processor explanations may take while /predict has requests (see Pacing)
EXPLAIN_SHARE = 0.1
# a request whose images take more than this decoded goes to the large-image lane (a 12 MP phone PNG
# takes 36 MB; a 12 MP JPEG, decoded reduced for a 224-pixel model, 0.6 MB)
LARGE_REQUEST_BYTES = 24 * 2**20


class Gate:
    """Admission for one route: `active` requests run at once, `waiting` more wait for a turn; beyond
    that, or past the time limit, a request gets 503 with Retry-After at once."""

    def __init__(self, name: str, active: int, waiting: int, timeout_s: float) -> None:
        self.name, self.capacity, self.queue_size, self.timeout_s = name, active, waiting, timeout_s
        self.active = self.waiting = self.turned_away = 0
        self._slots: asyncio.Semaphore | None = None

    @property
    def full(self) -> bool:
        return self.active + self.waiting >= self.capacity + self.queue_size

    def _busy(self, why: str) -> HTTPException:
        self.turned_away += 1
        return HTTPException(503, f"{self.name} is busy ({why}); try again shortly", {"Retry-After": "1"})

    def refuse_if_full(self) -> None:
        """503 at once when the gate is full: asked before a request's body is read, so that a
        flood is turned away without the work of reading and parsing it."""
        if self.full:
            raise self._busy(f"{self.active} in progress, {self.waiting} waiting")

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        self.refuse_if_full()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise self._busy(f"no turn within {self.timeout_s:g} s") from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()


class ErrorBody(BaseModel):
    detail: Any


MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One or more image files (the field may also be called `file`).",
        }
    },
    "required": ["files"],
}


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, by Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        await reply(send, 413, f"request body over the limit of {self.limit:,} bytes")


def _missing_field(name: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}]
    )


def _decode_base64(text: str, position: int) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"image {position}: not valid base64") from None


def prepare_upload(
    blob: bytes, name: str, spec: PreprocessSpec, settings: ServeSettings, deadline: float | None = None
) -> np.ndarray:
    """One uploaded file → the model's prepared uint8 image; a bad file is a 400 that names it, one
    whose decoding runs past `deadline` (time.monotonic()) a 413."""
    if not blob:
        raise HTTPException(400, f"{name}: empty file")
    try:
        image = decode_image(
            blob,
            draft_size=(spec.width, spec.height),
            max_pixels=settings.max_pixels,
            name=name,
            formats=UPLOAD_FORMATS,
            max_bytes=int(settings.max_decode_mb * 2**20),
            deadline=deadline,
        )
        return prepare_image(image, spec)
    except ImageFormatError as error:
        raise HTTPException(415, f"{name}: {error}") from None
    except DecodeTimeout:
        raise HTTPException(
            413,
            f"{name}: decoding the request's images took over {settings.decode_timeout_s:g} s (its budget)",
        ) from None
    except ImageDecodeError as error:
        raise HTTPException(400, f"{name}: {error}") from None
    except Exception as error:  # Pillow plug-ins raise assorted errors on hostile files
        raise HTTPException(400, f"{name}: cannot decode ({type(error).__name__})") from None


def request_cost(blobs: list[bytes], spec: PreprocessSpec, settings: ServeSettings) -> int:
    """The memory a request's images take decoded (`decode_cost`: a JPEG at the size draft mode
    reduces it to), read from their headers before any is decoded; 413 when their pixels together
    are over `max_request_pixels` (a file whose header does not open is left to `prepare_upload`)."""
    total = cost = 0
    for blob in blobs:
        try:
            pixels, size = decode_cost(blob, (spec.width, spec.height), UPLOAD_FORMATS)
        except Exception:
            continue
        total += pixels
        cost += size
    if total > settings.max_request_pixels:
        raise HTTPException(
            413,
            f"the {len(blobs)} images hold {total:,} pixels, over the limit of "
            f"{settings.max_request_pixels:,} a request: send fewer or smaller images",
        )
    return cost


def prepare_uploads(
    blobs: list[bytes], names: list[str], spec: PreprocessSpec, settings: ServeSettings
) -> list[np.ndarray]:
    """A request's images, prepared (`request_cost` has checked their budget), all within one time
    budget (`decode_timeout_s`) from now."""
    deadline = time.monotonic() + settings.decode_timeout_s
    return [prepare_upload(blob, name, spec, settings, deadline) for blob, name in zip(blobs, names)]


class HeldBodies:
    """The request bodies being read or waiting for their answer: their bytes together (a body counts
    at its Content-Length, else at the body limit, from before it is read) stay within `limit`;
    beyond it a request gets 503 with Retry-After at once. Bodies that trickle in (slowloris) hold
    little, so they never keep others out; bodies that are large and many cannot fill the memory."""

    def __init__(self, limit: int, body_limit: int) -> None:
        self.limit, self.body_limit = limit, body_limit
        self.held = self.turned_away = 0

    @property
    def full(self) -> bool:
        return self.held + self.body_limit > self.limit

    @contextlib.contextmanager
    def hold(self, request: Request) -> Iterator[None]:
        declared = request.headers.get("content-length", "")
        size = min(int(declared), self.body_limit) if declared.isdigit() else self.body_limit
        if self.held + size > self.limit:
            self.turned_away += 1
            raise HTTPException(
                503,
                f"the server holds {self.held / 1e6:,.0f} MB of requests already; try again shortly",
                {"Retry-After": "1"},
            )
        self.held += size
        try:
            yield
        finally:
            self.held -= size


class Pacing:
    """/predict first: while it has requests, an explanation (Grad-CAM, a backward pass through the
    network on the same cores) waits until the explanations before it have taken no more than
    `share` of the time since, so that a flood of /explain takes at most that share of the processor
    from ordinary predictions; with /predict idle, explanations run at once."""

    def __init__(self, share: float, busy: Callable[[], bool]) -> None:
        self.share, self.busy = share, busy
        self.next_turn = 0.0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        while time.monotonic() < self.next_turn and self.busy():
            time.sleep(0.02)
        started = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - started
            self.next_turn = time.monotonic() + spent * (1.0 / self.share - 1.0)


def _lower_priority() -> None:
    """Run this thread at the lowest CPU priority (Linux: a thread's own nice value), so that the
    large-image lane decodes with the cores the ordinary requests leave idle."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


async def read_request_in_time(
    request: Request, top_k: int | None, settings: ServeSettings
) -> tuple[list[bytes], list[str], int | None]:
    """`read_request`, or 408 when the body takes longer than `read_timeout_s` to arrive."""
    try:
        return await asyncio.wait_for(read_request(request, top_k, settings), settings.read_timeout_s)
    except ClientDisconnect:  # nobody is left to answer: a 400 for the log, not a traceback
        raise HTTPException(400, "the client closed the connection before its request arrived") from None
    except TimeoutError:
        raise HTTPException(
            408, f"the request body took over {settings.read_timeout_s:g} s to arrive"
        ) from None


class InMemoryMultiPart(MultiPartParser):
    """Starlette's multipart parser with uploads kept in memory up to the body limit (`HeldBodies`
    bounds them all): spooled to disk past 1 MB, every 64 KB chunk of a large upload cost a hop to
    the thread pool and a disk write, and 20 MB bodies took the cores from ordinary requests."""

    spool_max_size = 64 * 2**20


async def read_request(
    request: Request, top_k: int | None, settings: ServeSettings
) -> tuple[list[bytes], list[str], int | None]:
    """(image bytes, their names, top_k) of a multipart (`files`) or JSON (base64 `images`) request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        # the count check of the route answers 413; the form parser only guards against absurd counts
        parser = InMemoryMultiPart(
            request.headers, request.stream(), max_files=max(1000, settings.max_images), max_fields=100
        )
        try:
            form = await parser.parse()
        except MultiPartException as error:
            raise HTTPException(400, error.message) from None
        try:  # the uploads' files are closed on the way out, answered or not
            uploads = form.getlist("files") + form.getlist("file")
            if not uploads:
                raise _missing_field("files")
            blobs, names = [], []
            for position, upload in enumerate(uploads, start=1):
                if not isinstance(upload, UploadFile):
                    raise RequestValidationError(
                        [{"type": "value_error", "loc": ["body", "files"], "msg": "expected a file upload"}]
                    )
                blobs.append(await upload.read())
                names.append(upload.filename or f"image-{position}")
            return blobs, names, top_k
        finally:
            await form.close()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            body = PredictJSON.model_validate_json(await request.body())
        except ValidationError as error:
            raise RequestValidationError(
                jsonable_encoder(error.errors(include_url=False, include_context=False))
            ) from None
        blobs = [_decode_base64(text, i) for i, text in enumerate(body.images, start=1)]
        names = list(body.names or [])
        names += [f"image-{i}" for i in range(len(names) + 1, len(blobs) + 1)]
        return blobs, names[: len(blobs)], body.top_k or top_k
    raise HTTPException(415, "send multipart/form-data (field `files`) or application/json")


# How /predict appears in the OpenAPI schema: both request bodies, and its error answers.
PREDICT_ROUTE: dict[str, Any] = {
    "response_model": PredictResponse,
    "summary": "Top-k classes of one or more images",
    "responses": {
        400: {"model": ErrorBody, "description": "Not an image, truncated, or over the pixel limit."},
        401: {
            "model": ErrorBody,
            "description": "The server needs its token, and the request has not got it.",
        },
        403: {
            "model": ErrorBody,
            "description": "Sent by a page of another web site (its Origin or Sec-Fetch-Site says so), or "
            "naming another host than loopback's.",
        },
        408: {"model": ErrorBody, "description": "The request body arrived too slowly."},
        413: {
            "model": ErrorBody,
            "description": "Request body, image count, the images' pixels together, or the time their "
            "decoding takes over their limits.",
        },
        415: {
            "model": ErrorBody,
            "description": "Neither multipart/form-data nor JSON, or an image in a format cameras, phones "
            "and browsers do not make (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC and AVIF are read).",
        },
        503: {"model": ErrorBody, "description": "Busy: too many requests; try again after Retry-After."},
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": MULTIPART_SCHEMA},
                "application/json": {"schema": PredictJSON.model_json_schema()},
            },
        }
    },
}


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


ICON_SIZES = (192, 512)


def _static(name: str) -> bytes:
    return resources.files("imgclf.serve").joinpath(name).read_bytes()


def web_app_manifest(predictor: Predictor) -> dict[str, Any]:
    """The page as an installable web app: name, icons, standalone display, relative start URL (so
    it works behind a path prefix too)."""
    classes = len(predictor.classes)
    return {
        "name": f"imgclf: {classes} classes",
        "short_name": "imgclf",
        "description": "Take or choose a photo; this server's model names what it shows.",
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "orientation": "portrait",
        "background_color": "#f6f8fa",
        "theme_color": "#2f6fde",
        "icons": [
            {"src": "icon.svg", "sizes": "any", "type": "image/svg+xml"},
            *(
                {"src": f"icon-{size}.png", "sizes": f"{size}x{size}", "type": "image/png"}
                for size in ICON_SIZES
            ),
        ],
    }


def create_app(
    predictor: Predictor, settings: ServeSettings | None = None, access: Access | None = None
) -> FastAPI:
    """The FastAPI application serving `predictor`; `access`: who may use it (everyone by default)."""
    from imgclf.version import __version__

    settings = settings or ServeSettings()
    if settings.max_waiting is None:
        settings = replace(settings, max_waiting=64)
    spec = predictor.spec

    def scores(arrays: np.ndarray) -> np.ndarray:
        """Probabilities N×K and the likeness to the training images (similarity, distance; NaN
        without a feature bank) as two more columns, so that the micro-batcher splits them per request."""
        probabilities, likeness = predictor.score_arrays(arrays)
        columns = np.full((len(arrays), 2), np.nan, np.float32) if likeness is None else likeness
        return np.concatenate([probabilities, columns.astype(probabilities.dtype)], axis=1)

    batcher = MicroBatcher(scores, settings.max_batch, settings.batch_wait_ms / 1000.0)
    num_classes = len(predictor.classes)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()
        for pool in (decoders, explainers):
            pool.shutdown(wait=False, cancel_futures=True)

    architecture = predictor.info.architecture.get("name", "model")
    app = FastAPI(
        lifespan=lifespan,
        title="imgclf",
        version=__version__,
        summary=f"Image classifier: {num_classes} classes ({architecture}).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.settings = settings
    predict_gate = Gate("/predict", settings.max_active, settings.max_waiting, settings.timeout_s)
    explain_gate = Gate("/explain", settings.explain_active, settings.explain_waiting, settings.timeout_s)
    # requests whose images take over LARGE_REQUEST_BYTES decoded (large PNGs, TIFFs; JPEGs decode
    # reduced) take the large-image lane: one at a time, two waiting, in a thread of the lowest CPU
    # priority, never in /predict's slots, so that they cannot starve ordinary photos
    large_gate = Gate("/predict (large images)", 1, 2, settings.timeout_s)
    held = HeldBodies(int(settings.max_held_mb * 1_000_000), int(settings.max_body_mb * 1_000_000))
    app.state.gates = (predict_gate, explain_gate, large_gate)
    app.state.held = held
    # decoding has its own threads (not the shared pool other routes use), /explain its own one
    decoders = ThreadPoolExecutor(max_workers=max(1, settings.max_active), thread_name_prefix="imgclf-decode")
    large_decoders = ThreadPoolExecutor(
        1, thread_name_prefix="imgclf-decode-large", initializer=_lower_priority
    )
    explainers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-explain")

    async def in_pool(pool: ThreadPoolExecutor, work: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, work)

    app.add_middleware(BodySizeLimit, limit=int(settings.max_body_mb * 1_000_000))
    app.add_middleware(AccessGuard, access=access or Access())  # added last: it runs first

    @app.post("/predict", **PREDICT_ROUTE)
    async def predict(
        request: Request,
        top_k: int | None = Query(
            None, ge=1, le=1000, description=f"Classes per image (default {settings.default_top_k})."
        ),
    ) -> PredictResponse:
        # the body is read before the route's gate (a slow one holds no slot) within the held budget
        predict_gate.refuse_if_full()
        with held.hold(request):
            blobs, names, top_k = await read_request_in_time(request, top_k, settings)
            if len(blobs) > settings.max_images:
                raise HTTPException(413, f"{len(blobs)} images; at most {settings.max_images} a request")
            large = request_cost(blobs, spec, settings) > LARGE_REQUEST_BYTES
            gate, pool = (large_gate, large_decoders) if large else (predict_gate, decoders)
            async with gate.enter():
                arrays = await in_pool(pool, lambda: prepare_uploads(blobs, names, spec, settings))
                try:
                    answers = await asyncio.wait_for(batcher.predict(np.stack(arrays)), settings.timeout_s)
                except TimeoutError:
                    gate.turned_away += 1
                    raise HTTPException(
                        503, "the model took too long; try again shortly", {"Retry-After": "1"}
                    ) from None
        k = min(top_k or settings.default_top_k, num_classes)
        predictions = []
        for name, row in zip(names, answers):
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
            predictions.append(
                ImagePrediction(
                    image=name,
                    label=result.label,
                    labels=present,
                    unknown=result.unknown,
                    similarity=None if result.similarity is None else round(result.similarity, 6),
                    distance=None if result.distance is None else round(result.distance, 6),
                    top=top,
                )
            )
        return PredictResponse(predictions=predictions, backend=predictor.backend)

    explainer = serving_explainer(predictor)
    explaining = threading.Lock()  # Grad-CAM hooks the shared network: one explanation at a time
    pacing = Pacing(EXPLAIN_SHARE, lambda: predict_gate.active + predict_gate.waiting > 0)

    @app.post(
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
        if explainer is None:
            raise HTTPException(
                409, "explanations need the PyTorch model: serve the model folder with --backend torch"
            )
        if class_name is not None and class_name not in predictor.classes:
            raise HTTPException(400, f"class {class_name!r} is not one of the model's classes")

        def work(blobs: list[bytes], names: list[str]) -> list[ImageExplanation]:
            request_cost(blobs, spec, settings)
            found = []
            deadline = time.monotonic() + settings.decode_timeout_s
            for blob, name in zip(blobs, names):
                array = prepare_upload(blob, name, spec, settings, deadline)
                with explaining, pacing.turn():
                    result = explainer.explain_prepared(name, array, class_name)
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

        explain_gate.refuse_if_full()
        with held.hold(request):
            blobs, names, _ = await read_request_in_time(request, None, settings)
            if len(blobs) > settings.max_images:
                raise HTTPException(413, f"{len(blobs)} images; at most {settings.max_images} a request")
            async with explain_gate.enter():
                return ExplainResponse(explanations=await in_pool(explainers, lambda: work(blobs, names)))

    @app.get("/health", response_model=Health, summary="Liveness and load")
    async def health() -> Health:
        turned_away = predict_gate.turned_away + explain_gate.turned_away + large_gate.turned_away
        busy = predict_gate.full or explain_gate.full or large_gate.full or held.full
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

    @app.get("/model", summary="Classes, preprocessing, training metrics and serving settings")
    async def model() -> dict[str, Any]:
        return describe_model(predictor, settings, batcher)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("imgclf.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/manifest.webmanifest", include_in_schema=False)
    async def manifest() -> Response:
        body = json.dumps(web_app_manifest(predictor), ensure_ascii=False)
        return Response(body, media_type="application/manifest+json")

    @app.get("/icon.svg", include_in_schema=False)
    async def icon_svg() -> Response:
        return Response(_static("icon.svg"), media_type="image/svg+xml")

    @app.get("/icon-{size}.png", include_in_schema=False)
    async def icon_png(size: int) -> Response:
        if size not in ICON_SIZES:
            raise HTTPException(404, "Not Found")
        return Response(_static(f"icon-{size}.png"), media_type="image/png")

    _add_offline_docs(app)
    return app


DOCS_TOKEN_HOOK = """
    requestInterceptor: (request) => {
        if (window.imgclfToken) request.headers.Authorization = "Bearer " + window.imgclfToken;
        return request;
    },"""
# the token the address carried, read once and dropped from the address bar and history
DOCS_TOKEN_READ = """<script>
window.imgclfToken = new URLSearchParams(window.location.search).get("token");
if (window.location.search) history.replaceState(null, "", window.location.pathname);
</script>
"""


def _add_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the fastapi-offline package's copy, so the docs work without internet."""
    from fastapi.staticfiles import StaticFiles

    try:
        static = resources.files("fastapi_offline") / "static"
    except ModuleNotFoundError:  # the API still works; only its browsable docs are missing
        logger.warning("fastapi-offline is not installed; /docs is off (the schema is at /openapi.json)")
        return
    app.mount("/docs-static", StaticFiles(directory=str(static)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(token: str | None = None) -> HTMLResponse:
        schema = app.openapi_url or "/openapi.json"
        page = get_swagger_ui_html(
            openapi_url=f"{schema}?{urlencode({'token': token})}" if token else schema,
            title=f"{app.title} API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no call to the public validator
        )
        # "Try it out" sends the token the page's address carried, as the camera page does
        html = page.body.decode("utf-8").replace(
            "SwaggerUIBundle({", "SwaggerUIBundle({" + DOCS_TOKEN_HOOK, 1
        )
        html = html.replace("<script", DOCS_TOKEN_READ + "<script", 1)
        return HTMLResponse(html)
