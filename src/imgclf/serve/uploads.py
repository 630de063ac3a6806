"""Uploads: a request's images read from multipart or JSON within their time and byte budgets, their
decoding cost read from their headers before any is decoded, and each decoded and prepared for the
model within the request's decoding deadline. A bad image is a 4xx that names it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

import numpy as np
from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imgclf.data.decode import (
    UPLOAD_FORMATS,
    DecodeTimeout,
    ImageDecodeError,
    ImageFormatError,
    decode_cost,
    decode_image,
)
from imgclf.data.preprocess import PreprocessSpec, prepare_image
from imgclf.serve.schemas import PredictJSON
from imgclf.serve.settings import ServeSettings


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
