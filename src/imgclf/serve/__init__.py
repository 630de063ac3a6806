"""HTTP prediction service (FastAPI + uvicorn) with micro-batching and a web page."""

from imgclf.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
