"""HTTP prediction service (FastAPI + uvicorn) with micro-batching and a web page, split by concern:
`settings` (limits, declared once), `schemas` (bodies and OpenAPI), `access` (who may use it),
`admission` (gates and budgets), `uploads` (reading and decoding images), `routes`, `static`, and
`app` (`create_app` puts them together). Importing the package loads none of them (the command
line's --help reads `settings` alone)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Access", "AccessGuard", "ServeSettings", "create_app"]

if TYPE_CHECKING:
    from imgclf.serve.access import Access, AccessGuard
    from imgclf.serve.app import create_app
    from imgclf.serve.settings import ServeSettings


def __getattr__(name: str) -> Any:
    if name in ("Access", "AccessGuard"):  # who may use a server: serve's, and the review page's
        from imgclf.serve import access

        return getattr(access, name)
    if name == "create_app":
        from imgclf.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from imgclf.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module 'imgclf.serve' has no attribute {name!r}")
