"""`review`: the page that shows what in a data set needs a human, and records the decisions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgclf.config import DataConfig
from imgclf.errors import UsageError


def open_review(
    data: str | Path,
    *,
    model: str | Path | None = None,
    new: str | Path | None = None,
    review: str | Path = "review.jsonl",
    data_cfg: DataConfig | None = None,
    device: str = "auto",
) -> Any:
    """A `ReviewSession` over `data`: its findings ranked, its decisions log opened."""
    from imgclf.review.session import open_review as open_session

    return open_session(data, model=model, new=new, review=review, cfg=data_cfg, device=device)


def serve_review(
    session: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8010,
    token: str | None = None,
    on_start: Callable[[str], None] | None = None,
) -> None:
    """Serve the review page until Ctrl-C, always with a token (`token`, else $IMGCLF_TOKEN, else
    one made up now): the page can change the user's files, so no other web page may drive it."""
    import uvicorn

    from imgclf.review.app import create_review_app
    from imgclf.serve.access import LOOPBACK_HOSTS, Access, resolve_token

    if not 0 < port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    token = resolve_token(host, token, require_token=True)
    assert token is not None
    access = Access(token=token, loopback_only=host in LOOPBACK_HOSTS, query_token_changes=False)
    application = create_review_app(session, access)
    if on_start is not None:
        on_start(token)
    uvicorn.run(application, host=host, port=port, log_level="warning")


def apply_review(
    data: str | Path, review: str | Path = "review.jsonl", data_cfg: DataConfig | None = None
) -> list[str]:
    """Carry a review's decisions out on the data: changes to class folders (undone by
    `revert_review`), or a new CSV beside a table. Returns the lines to show: what was done first."""
    from imgclf.review.session import apply_decisions

    return apply_decisions(data, review, data_cfg or DataConfig())


def revert_review(data: str | Path, data_cfg: DataConfig | None = None) -> list[str]:
    """Put back what an applied review changed in class folders. Returns the lines to show: what
    was put back, then each change that could not be undone and why (kept for a later try)."""
    from imgclf.review.session import revert_changes

    return revert_changes(data, data_cfg or DataConfig())
