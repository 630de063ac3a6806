"""The HTTP prediction service: a FastAPI app over a `Predictor`, with micro-batching and a web page.

Endpoints: `POST /predict` (multipart files or JSON with base64 images), `POST /explain`,
`GET /health`, `GET /model`, `GET /` (the web page), `GET /docs` (OpenAPI docs, served from the
package: no CDN). Bad input is answered with a JSON error and never stops the server: a body over
the size limit gets 413, an unreadable, truncated or over-large image 400, a missing or wrong field
422. The service is split by concern: `settings`, `schemas`, `access`, `admission`, `uploads`,
`routes`, `static`; `create_app` puts them together.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from fastapi import FastAPI

from imgclf.inference.predictor import Predictor
from imgclf.serve import routes, static
from imgclf.serve.access import Access, AccessGuard
from imgclf.serve.admission import EXPLAIN_SHARE, BodySizeLimit, Gate, HeldBodies, Pacing, lower_priority
from imgclf.serve.batching import MicroBatcher
from imgclf.serve.routes import Serving, serving_explainer
from imgclf.serve.settings import ServeSettings


def create_app(
    predictor: Predictor,
    settings: ServeSettings | None = None,
    access: Access | None = None,
    web_app: dict[str, bytes] | None = None,
    web_app_line: str = "no phone app at /app/: make one with `imgclf export MODEL --format web`",
) -> FastAPI:
    """The FastAPI application serving `predictor`; `access`: who may use it (everyone by default);
    `web_app`: the phone app's files (path → bytes, `imgclf.export.formats.web`), served at /app/,
    or None (then /app/ answers 404 with `web_app_line`)."""
    from imgclf.version import __version__

    settings = settings or ServeSettings()
    settings.check()
    if settings.max_waiting is None:
        settings = replace(settings, max_waiting=64)
    state = create_serving(predictor, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.batcher.close()
        state.close()

    architecture = predictor.info.architecture.get("name", "model")
    app = FastAPI(
        lifespan=lifespan,
        title="imgclf",
        version=__version__,
        summary=f"Image classifier: {len(predictor.classes)} classes ({architecture}).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.serving = state
    app.state.web_app, app.state.web_app_line = web_app, web_app_line
    app.state.batcher, app.state.settings = state.batcher, settings
    app.state.gates, app.state.held = state.gates, state.held
    app.add_middleware(BodySizeLimit, limit=int(settings.max_body_mb * 1_000_000))
    app.add_middleware(AccessGuard, access=access or Access())  # added last: it runs first
    app.include_router(routes.router)
    app.include_router(static.router)
    static.add_offline_docs(app)
    return app


def create_serving(predictor: Predictor, settings: ServeSettings) -> Serving:
    """The state the routes share: the micro-batcher over the model, the admission gates and the body
    budget, the decoding threads (their own, not the pool other routes use) and the explainer."""

    def scores(arrays: np.ndarray) -> np.ndarray:
        """Probabilities N×K and the likeness to the training images (similarity, distance; NaN
        without a feature bank) as two more columns, so that the micro-batcher splits them per request."""
        probabilities, likeness = predictor.score_arrays(arrays)
        columns = np.full((len(arrays), 2), np.nan, np.float32) if likeness is None else likeness
        return np.concatenate([probabilities, columns.astype(probabilities.dtype)], axis=1)

    predict_gate = Gate("/predict", settings.max_active, settings.max_waiting, settings.timeout_s)
    return Serving(
        predictor=predictor,
        settings=settings,
        batcher=MicroBatcher(scores, settings.max_batch, settings.batch_wait_ms / 1000.0),
        predict_gate=predict_gate,
        explain_gate=Gate("/explain", settings.explain_active, settings.explain_waiting, settings.timeout_s),
        # requests whose images take over LARGE_REQUEST_BYTES decoded (large PNGs, TIFFs; JPEGs decode
        # reduced) take the large-image lane: one at a time, two waiting, in a thread of the lowest CPU
        # priority, never in /predict's slots, so that they cannot starve ordinary photos
        large_gate=Gate("/predict (large images)", 1, 2, settings.timeout_s),
        held=HeldBodies(int(settings.max_held_mb * 1_000_000), int(settings.max_body_mb * 1_000_000)),
        decoders=ThreadPoolExecutor(max(1, settings.max_active), thread_name_prefix="imgclf-decode"),
        large_decoders=ThreadPoolExecutor(
            1, thread_name_prefix="imgclf-decode-large", initializer=lower_priority
        ),
        explainers=ThreadPoolExecutor(1, thread_name_prefix="imgclf-explain"),
        explainer=serving_explainer(predictor),
        pacing=Pacing(EXPLAIN_SHARE, lambda: predict_gate.active + predict_gate.waiting > 0),
    )
