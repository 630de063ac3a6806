"""What the service serves from the package: the camera page, its web app manifest and icons, and
the API docs (Swagger UI from the fastapi-offline package: no CDN)."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from imgclf import installable
from imgclf.inference.predictor import Predictor

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


def _static(name: str) -> bytes:
    return resources.files("imgclf.serve").joinpath(name).read_bytes()


def web_app_manifest(predictor: Predictor) -> dict[str, Any]:
    """The camera page as an installable web app (`imgclf.installable`)."""
    return installable.web_app_manifest(
        f"imgclf: {len(predictor.classes)} classes",
        "imgclf",
        "Take or choose a photo; this server's model names what it shows.",
    )


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files("imgclf.serve").joinpath("page.html").read_text(encoding="utf-8"))


@router.get("/manifest.webmanifest")
async def manifest(request: Request) -> Response:
    body = json.dumps(web_app_manifest(request.app.state.serving.predictor), ensure_ascii=False)
    return Response(body, media_type="application/manifest+json")


@router.get("/icon.svg")
async def icon_svg() -> Response:
    return Response(_static("icon.svg"), media_type="image/svg+xml")


@router.get("/icon-{size}.png")
async def icon_png(size: int) -> Response:
    if size not in installable.ICON_SIZES:
        raise HTTPException(404, "Not Found")
    return Response(_static(f"icon-{size}.png"), media_type="image/png")


APP_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# the app's pages are cross-origin isolated (WebAssembly threads need it), and every file is checked
# with the server on each visit while it is reachable (the service worker serves them offline)
APP_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@router.get("/app")
async def app_root() -> Response:
    return Response(status_code=308, headers={"Location": "/app/"})


@router.get("/app/{path:path}")
async def app_file(path: str, request: Request) -> Response:
    """The phone app's files (`imgclf export --format web`), from memory: /app/ is its page."""
    files = request.app.state.web_app
    if files is None:
        raise HTTPException(404, request.app.state.web_app_line)
    name = path or "index.html"
    content = files.get(name)
    if content is None:
        raise HTTPException(404, "Not Found")
    media_type = APP_TYPES.get(PurePosixPath(name).suffix, "text/plain; charset=utf-8")
    return Response(content, media_type=media_type, headers=APP_HEADERS)


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


def add_offline_docs(app: FastAPI) -> None:
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
