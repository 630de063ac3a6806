"""The review page's server: the page, the items, their images, and one route per decision.

Images are only ever served by item or sample number (never by a path the browser names), and each
decision is appended to review.jsonl before the answer goes back. `serve`'s access guard stands in
front (`imgclf.serve.access`): `imgclf review` always gives it a token, which every request that
changes something must carry as a header, and it refuses requests from other web sites and framing.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from imgclf.data.decisions import ACTIONS
from imgclf.data.decode import ImageDecodeError
from imgclf.errors import ImgclfError
from imgclf.review.session import ReviewSession
from imgclf.serve import Access, AccessGuard


class DecisionBody(BaseModel):
    item: int = Field(ge=0, description="The item's number, as GET /api/items lists it.")
    action: str = Field(description=f"One of {', '.join(ACTIONS)}.")
    label: str | None = Field(None, description="The class, for relabel and label (default: the suggestion).")
    new_class: bool = Field(
        False, description="`label` is a new class the user named in the page (one folder name, not hidden)."
    )


def create_review_app(session: ReviewSession, access: Access | None = None) -> FastAPI:
    """The review page's application; `access`: its token and host rules (`imgclf review` always
    gives a token; without one, the other rules of the guard still hold)."""
    app = FastAPI(title="imgclf review", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("imgclf.review").joinpath("page.html").read_text(encoding="utf-8")
    app.add_middleware(AccessGuard, access=access or Access(query_token_changes=False))

    async def off_loop(work: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work, *args)
        except ImageDecodeError as error:
            raise HTTPException(422, str(error)) from None
        except ImgclfError as error:
            raise HTTPException(400, str(error)) from None
        except OSError as error:
            raise HTTPException(404, f"cannot read the image: {error.strerror or error}") from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/items")
    async def items() -> dict[str, Any]:
        return await off_loop(session.state)

    @app.get("/api/image/{number}")
    async def image(number: int) -> Response:
        item = await off_loop(session.item, number)
        return _image_response(await off_loop(session.image_bytes, item.location))

    @app.get("/api/sample/{sample}")
    async def sample(sample: int) -> Response:
        if not 0 <= sample < len(session.image_set):
            raise HTTPException(404, f"no sample {sample}")
        location = session.image_set.location(sample)
        return _image_response(await off_loop(session.image_bytes, location))

    @app.get("/api/neighbours/{number}")
    async def neighbours(number: int) -> list[dict[str, Any]]:
        return await off_loop(session.neighbours, number)

    @app.get("/api/heatmap/{number}")
    async def heatmap(number: int, label: str | None = None) -> Response:
        if session.explainer is None:
            raise HTTPException(409, "heatmaps need the model: start the review with --model RUN")
        return Response(await off_loop(session.heatmap, number, label), media_type="image/png")

    @app.post("/api/decide")
    async def decide(body: DecisionBody) -> dict[str, Any]:
        if body.action not in ACTIONS:
            raise HTTPException(400, f"action must be one of {', '.join(ACTIONS)}")
        decision = await off_loop(session.decide, body.item, body.action, body.label, body.new_class)
        return {"item": body.item, "action": decision.action, "new": decision.new}

    @app.post("/api/undo")
    async def undo() -> dict[str, Any]:
        decision = await off_loop(session.undo_last)
        return {"undone": decision.item if decision is not None else None}

    @app.post("/api/apply")
    async def apply() -> dict[str, str]:
        return {"message": await off_loop(session.apply)}

    @app.post("/api/revert")
    async def revert() -> dict[str, str]:
        return {"message": await off_loop(session.revert)}

    return app


def _image_response(data: bytes) -> Response:
    """The page's images (JPEG, or PNG for small and grey ones), kept by the browser a while."""
    media = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=300"})
