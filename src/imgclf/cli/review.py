"""`imgclf review`: what in a data set needs a human, in the browser; decisions to review.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import DATA_SOURCE, DEVICE, DataArgument, shared, shared_values

# the command's own options, each declared once here
ModelOption = Annotated[
    Path | None,
    typer.Option(
        help="A run (or model) folder: its split, its features for the label check, its confident "
        "mistakes on validation and Grad-CAM heatmaps.",
        show_default=False,
    ),
]
NewOption = Annotated[
    Path | None,
    typer.Option(
        help="A folder of unlabelled images: the ones the model answers unknown or least surely come "
        "to be labelled (needs --model).",
        show_default=False,
    ),
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="The decisions file, appended to.")]
HostOption = Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens the page to the network.")]
PortOption = Annotated[int, typer.Option(help="TCP port.")]
NoBrowserOption = Annotated[
    bool, typer.Option("--no-browser", help="Only print the page's address; do not open a browser.")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        help="The token the page needs; the printed address carries it \\[default: $IMGCLF_TOKEN, "
        "else one made up now: the page can move your files, so it always has one].",
        show_default=False,
    ),
]
ApplyOption = Annotated[
    bool,
    typer.Option(
        "--apply",
        help="Carry out the decisions of --out instead of opening the page: moves between class "
        "folders, new images copied in (undone by --revert), or a new <name>.reviewed.csv beside "
        "a table. Every decision is checked first; nothing is ever overwritten.",
    ),
]
RevertOption = Annotated[
    bool,
    typer.Option(
        "--revert",
        help="Put back what earlier --apply runs changed: moved files back, unchanged copies "
        "removed, folders they made removed when empty; says what it could not undo, and why.",
    ),
]


@command("review", rank=95)
@handle_errors
@shared(DATA_SOURCE, DEVICE)
def review(
    data: DataArgument,
    model: ModelOption = None,
    new: NewOption = None,
    out: OutOption = Path("review.jsonl"),
    host: HostOption = ("127.0.0.1"),
    port: PortOption = 8010,
    no_browser: NoBrowserOption = False,
    token: TokenOption = None,
    apply: ApplyOption = False,
    revert: RevertOption = False,
    *,
    settings: dict[str, Any],
) -> None:
    """Review what needs a human, ranked by how much fixing it is worth: likely wrong labels, the
    same image under two classes, copies across splits, corrupt files, the model's confident
    mistakes, and with --new the images whose label would teach the model most.

    Keys: Enter relabels to the suggestion, 1–9 to that class, k keeps, n marks not any class, x
    excludes, c relabels to a new class you name, u undoes, ←/→ move, h shows where the model looked.
    The page needs the token its printed address carries. Every decision is appended to
    review.jsonl at once; nothing on disk moves until --apply. Then
    [bold]imgclf update RUN --review review.jsonl[/bold] refits the model in seconds, or
    [bold]imgclf train DATA --review review.jsonl[/bold] trains with the decisions as an overlay.
    """
    from imgclf import api
    from imgclf.config import DataConfig
    from imgclf.console import console, err_console

    values = shared_values(settings, DATA_SOURCE)
    data_cfg = DataConfig(**values)
    if revert:
        lines = api.revert_review(data, data_cfg)
        console.print(lines[0], markup=False)
        for line in lines[1:]:
            err_console.print(line, markup=False, style="yellow")
        return
    if apply:
        for line in api.apply_review(data, out, data_cfg):
            console.print(line, markup=False)
        return
    session = api.open_review(data, model=model, new=new, review=out, data_cfg=data_cfg,
                              **shared_values(settings, DEVICE))  # fmt: skip
    kinds: dict[str, int] = {}
    for item in session.items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    found = ", ".join(f"{kind} {count:,}" for kind, count in kinds.items()) or "nothing"
    console.print(f"{len(session.items):,} items to review ({found}); decisions go to {out}", markup=False)

    def started(chosen: str) -> None:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        address = f"http://{shown}:{port}/?token={chosen}"
        console.print(f"review page: {address}  (Ctrl-C stops it; the decisions are kept)", markup=False)
        if not no_browser:
            import threading
            import webbrowser

            threading.Timer(1.0, webbrowser.open, (address,)).start()

    api.serve_review(session, host=host, port=port, token=token, on_start=started)
