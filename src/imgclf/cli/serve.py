"""`imgclf serve`: a model over HTTP, with the camera page for phones."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from imgclf.cli.app import command, handle_errors
from imgclf.cli.options import DEVICE, Backend, ModelArgument, TtaOption, shared, shared_values


@command("serve", rank=40)
@handle_errors
@shared(DEVICE)
def serve(
    model: ModelArgument,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 opens the service to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[
        int, typer.Option(help="Most images in one forward pass; 1 turns micro-batching off.")
    ] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long the first request of a batch waits for others (ms).")
    ] = 2.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body (MB); larger gets 413.")] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image (width × height); larger gets 400, before decoding.")
    ] = 40_000_000,
    max_decode_mb: Annotated[
        float,
        typer.Option(
            help="Most memory one image may take decoded (MiB; a JPEG at its reduced size); larger gets "
            "400, before decoding."
        ),
    ] = 100.0,
    max_images: Annotated[int, typer.Option(help="Most images in one request.")] = 32,
    max_request_pixels: Annotated[
        int,
        typer.Option(help="Most pixels of all the images of one request, from their headers; more get 413."),
    ] = 200_000_000,
    max_active: Annotated[
        int | None,
        typer.Option(
            help="/predict requests in progress at once \\[default: 2 per core]; /explain has one.",
            show_default=False,
        ),
    ] = None,
    max_waiting: Annotated[
        int | None,
        typer.Option(
            help="/predict requests waiting beyond those; more get 503 with Retry-After \\[default: what "
            "the model answers in a quarter of --timeout, measured at start, 8 to 256].",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds a request may wait and run before it gets 503.")
    ] = 60.0,
    max_held_mb: Annotated[
        float,
        typer.Option(
            help="Most MB of request bodies read or waiting for their answer at once (each counted at "
            "its Content-Length); more get 503 with Retry-After."
        ),
    ] = 256.0,
    decode_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds the decoding of one request's images may take; past it the request gets 413 and "
            "its thread is free at once."
        ),
    ] = 10.0,
    read_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a request may take to arrive: slower headers close the connection, a slower "
            "body gets 408."
        ),
    ] = 20.0,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per image unless a request asks.")] = 5,
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
    *,
    settings: dict[str, Any],
) -> None:
    """Serve a model over HTTP: POST /predict, POST /explain, GET /health, GET /model, docs at /docs,
    and a web page at / that works as a camera app on a phone.

    Concurrent requests are micro-batched (see --max-batch, --batch-wait-ms). POST /explain (Grad-CAM)
    needs the PyTorch model (--backend torch). Ctrl-C stops it.
    """
    from imgclf import api
    from imgclf.serve import ServeSettings

    limits = ServeSettings(
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_body_mb=max_body_mb,
        max_pixels=max_pixels,
        max_images=max_images,
        max_request_pixels=max_request_pixels,
        max_decode_mb=max_decode_mb,
        max_waiting=max_waiting,
        timeout_s=timeout,
        read_timeout_s=read_timeout,
        decode_timeout_s=decode_timeout,
        max_held_mb=max_held_mb,
        **({"max_active": max_active} if max_active is not None else {}),
        default_top_k=top_k,
    )

    api.serve(
        model, host=host, port=port, settings=limits, backend=backend.value, threads=threads, tta=tta,
        label_map=label_map, access_log=access_log, token=token, require_token=False if no_token else None,
        on_start=functools.partial(announce, host=host, port=port, tta=tta, max_batch=max_batch),
        **shared_values(settings, DEVICE),
    )  # fmt: skip


def announce(
    predictor: Any, token: str | None, admission: str, *, host: str, port: int, tta: bool, max_batch: int
) -> None:
    """The lines `serve` prints once the model is loaded: where it listens (with the token), how
    many requests it admits, what that exposes, and off loopback the address for a phone, drawn as
    a QR code."""
    from imgclf.console import err_console
    from imgclf.serve.access import address_qr, reachable_address

    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    err_console.print(
        f"serving {len(predictor.classes)} classes with {predictor.backend}"
        f"{', test-time augmentation (mirror images)' if tta else ''} at {address} "
        f"(API docs: /docs; micro-batching: {'off' if max_batch == 1 else f'up to {max_batch} images'})",
        markup=False,
        soft_wrap=True,
    )
    err_console.print(admission, markup=False, soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"note: listening on {host}, reachable from other machines", style="yellow")
        if token is None:
            err_console.print("warning: --no-token: anyone on the network can use this server", style="red")
        else:
            err_console.print(
                "every request needs the token (the address above carries it); there is no TLS: "
                "anyone who can watch the network can read it",
                style="yellow",
            )
        reachable = reachable_address(host)
        if reachable != host or token:
            shown_here = f"[{reachable}]" if ":" in reachable else reachable
            link = f"http://{shown_here}:{port}/" + (f"?token={token}" if token else "")
            err_console.print(f"on a phone: {link}", markup=False, soft_wrap=True)
            err_console.file.write(address_qr(link))
