"""The request and response bodies of the service, and how its routes appear in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
