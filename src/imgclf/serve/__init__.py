"""HTTP prediction service (FastAPI + uvicorn) with micro-batching and a web page."""

from imgclf.serve.access import Access
from imgclf.serve.app import ServeSettings, create_app

__all__ = ["Access", "ServeSettings", "create_app"]
