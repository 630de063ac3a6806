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
    require_token: bool | None = None,
    on_start: Callable[[str | None], None] | None = None,
) -> None:
    """Serve the review page until Ctrl-C; bound to anything but loopback, with a token (as serve)."""
    import uvicorn

    from imgclf.review.app import create_review_app
    from imgclf.serve import Access
    from imgclf.serve.app import LOOPBACK_HOSTS, resolve_token

    if not 0 < port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    token = resolve_token(host, token, require_token)
    application = create_review_app(session, Access(token=token, loopback_only=host in LOOPBACK_HOSTS))
    if on_start is not None:
        on_start(token)
    uvicorn.run(application, host=host, port=port, log_level="warning")


def apply_review(
    data: str | Path, review: str | Path = "review.jsonl", data_cfg: DataConfig | None = None
) -> str:
    """Carry a review's decisions out on the data: moves between class folders, or a new CSV."""
    from imgclf.data.decisions import apply_to_folders, apply_to_table, read_decisions
    from imgclf.data.prepared import load_data
    from imgclf.review.session import _table_columns

    decisions = read_decisions(review)
    if Path(data).is_dir():
        moves = apply_to_folders(data, decisions)
        return f"moved {len(moves)} files in {data} (imgclf review {data} --revert puts them back)"
    image_set = load_data(str(data), data_cfg or DataConfig())
    if image_set.layout != "table":
        raise UsageError(
            "--apply moves files in class folders or writes a reviewed CSV; this data is neither"
        )
    out = apply_to_table(image_set.source, *_table_columns(image_set), decisions)
    return f"wrote {out} (the old table is untouched)"


def revert_review(data: str | Path) -> str:
    """Put back the files an applied review moved."""
    from imgclf.data.decisions import revert_moves

    return f"put back {revert_moves(data)} files in {data}"
