"""`imgclf serve`: a model over HTTP, with the camera page for phones."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import DEVICE, Backend, ModelArgument, TtaOption, shared, shared_values, with_settings
from imgclf.serve.settings import ServeSettings, serve_settings


@command("serve", rank=40)
@handle_errors
@with_settings(lambda item: True, source=serve_settings, into="limits")  # ServeSettings' fields
@shared(DEVICE)
def serve(
    model: ModelArgument,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 opens the service to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    label_map: Annotated[
        Path | None, typer.Option(help="JSON of display names (class names or 1-based indices as keys).")
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="auto: ONNX Runtime on the CPU when a current model.onnx exists.")
    ] = Backend.auto,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads \\[default: one per core].", show_default=False)
    ] = None,
    tta: TtaOption = False,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log",
            help="Log every request: client, method, path (any token replaced by …), status, milliseconds.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            help="The token every request must carry (Authorization: Bearer, or ?token= as the printed "
            "address has it) \\[default: $IMGCLF_TOKEN, else one made up when --host is not loopback].",
            show_default=False,
        ),
    ] = None,
    no_token: Annotated[
        bool,
        typer.Option("--no-token", help="Serve without a token: anyone who reaches the port may use it."),
    ] = False,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            help="Serve HTTPS with this certificate (PEM; with --ssl-keyfile). Phones install the app at "
            "/app/ for offline use, and open the live camera, only from HTTPS addresses.",
            show_default=False,
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option(help="The certificate's private key (PEM).", show_default=False)
    ] = None,
    *,
    settings: dict[str, Any],
    limits: dict[str, Any],
) -> None:
    """Serve a model over HTTP: POST /predict, POST /explain, GET /health, GET /model, docs at /docs,
    a web page at / that works as a camera app on a phone, and at /app/ the phone app that runs the
    model on the phone itself (imgclf export MODEL --format web; else built around model.onnx).

    Concurrent requests are micro-batched (see --max-batch, --batch-wait-ms). POST /explain (Grad-CAM)
    needs the PyTorch model (--backend torch). Ctrl-C stops it.
    """
    from imgclf import api

    limits = ServeSettings(**limits)
    scheme = "https" if ssl_certfile else "http"
    api.serve(
        model, host=host, port=port, settings=limits, backend=backend.value, threads=threads, tta=tta,
        label_map=label_map, access_log=access_log, token=token, require_token=False if no_token else None,
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        on_start=functools.partial(
            announce, host=host, port=port, tta=tta, max_batch=limits.max_batch, scheme=scheme
        ),
        **shared_values(settings, DEVICE),
    )  # fmt: skip


def announce(
    predictor: Any,
    token: str | None,
    admission: str,
    app: str | None = None,
    *,
    host: str,
    port: int,
    tta: bool,
    max_batch: int,
    scheme: str = "http",
) -> None:
    """The lines `serve` prints once the model is loaded: where it listens (with the token), how
    many requests it admits, the phone app at /app/, what that exposes, and off loopback the
    address for a phone, drawn as a QR code."""
    from imgclf.console import err_console
    from imgclf.serve.access import address_qr, reachable_address

    shown = f"[{host}]" if ":" in host else host
    address = f"{scheme}://{shown}:{port}/" + (f"?token={token}" if token else "")
    err_console.print(
        f"serving {len(predictor.classes)} classes with {predictor.backend}"
        f"{', test-time augmentation (mirror images)' if tta else ''} at {address} "
        f"(API docs: /docs; micro-batching: {'off' if max_batch == 1 else f'up to {max_batch} images'})",
        markup=False,
        soft_wrap=True,
    )
    err_console.print(admission, markup=False, soft_wrap=True)
    query = f"?token={token}" if token else ""
    if app is not None:
        line = app_line(app, f"{scheme}://{shown}:{port}/app/{query}", scheme, host)
        err_console.print(line, markup=False, soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"note: listening on {host}, reachable from other machines", style="yellow")
        if token is None:
            err_console.print("warning: --no-token: anyone on the network can use this server", style="red")
        else:
            plain = "; there is no TLS: anyone who can watch the network can read it"
            needs = "every request needs the token (the address above carries it)"
            err_console.print(needs + ("" if scheme == "https" else plain), style="yellow")
        reachable = reachable_address(host)
        if reachable != host or token:
            shown_here = f"[{reachable}]" if ":" in reachable else reachable
            link = f"{scheme}://{shown_here}:{port}/" + query
            err_console.print(f"on a phone: {link}", markup=False, soft_wrap=True)
            if app is not None:
                phone_app = f"{scheme}://{shown_here}:{port}/app/{query}"
                err_console.print(f"the phone app on a phone: {phone_app}", markup=False, soft_wrap=True)
            err_console.file.write(address_qr(link))


def app_line(app: str, address: str, scheme: str, host: str) -> str:
    """Where the phone app is, where it comes from, and (over HTTP off loopback) why a phone will not
    keep it for offline use."""
    offline = ""
    if scheme != "https" and host not in ("127.0.0.1", "localhost", "::1"):
        offline = "; phones keep it for offline use only from HTTPS (--ssl-certfile) or a static HTTPS host"
    return f"phone app (the model runs on the phone): {address} ({app}{offline})"
