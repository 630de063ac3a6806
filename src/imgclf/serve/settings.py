"""The service's limits and batching, each declared once with `setting()`: its default, help and
bounds. `imgclf serve`'s flags are generated from these fields as `train`'s are from the training
config, and `ServeSettings.check` applies the bounds on every path (flags, Python)."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, replace

from imgclf.config import declared_settings, setting
from imgclf.errors import UsageError

PANEL = ""  # among serve's own options


def _cores_times_two() -> int:
    return 2 * (os.cpu_count() or 1)


@dataclass
class ServeSettings:
    """Limits and batching of the service (the `imgclf serve` flags)."""

    max_batch: int = setting(
        32, "Most images in one forward pass; 1 turns micro-batching off.", PANEL, minimum=1
    )
    batch_wait_ms: float = setting(
        2.0, "How long the first request of a batch waits for others (ms).", PANEL, minimum=0
    )
    max_body_mb: float = setting(20.0, "Largest request body (MB); larger gets 413.", PANEL, above=0)
    max_pixels: int = setting(
        40_000_000, "Largest image (width × height); larger gets 400, before decoding.", PANEL, minimum=1
    )
    # a 0.2 MB PNG can claim 6320×6320 RGBA, 152 MiB, before any resize
    max_decode_mb: float = setting(
        100.0,
        "Most memory one image may take decoded (MiB; a JPEG at its reduced size); larger gets 400, before "
        "decoding.",
        PANEL,
        above=0,
    )
    # the decoding time one request may cost (16 phone photos of 12 MP; 5 images at the per-image limit)
    max_request_pixels: int = setting(
        200_000_000,
        "Most pixels of all the images of one request, from their headers; more get 413.",
        PANEL,
        minimum=1,
    )
    max_images: int = setting(32, "Most images in one request.", PANEL, minimum=1)
    default_top_k: int = setting(
        5, "Classes per image unless a request asks.", PANEL, flag="--top-k", short="-k", minimum=1
    )
    # Admission: requests of a route in progress at once, and waiting beyond those; more get 503 with
    # Retry-After (never an unbounded queue). /explain (Grad-CAM, seconds each) has its own, smaller
    # gate and its own thread, so a flood of it cannot starve /predict.
    max_active: int = setting(
        None,
        "/predict requests in progress at once; /explain has one.",
        PANEL,
        shown="2 per core",
        default_factory=_cores_times_two,
        minimum=1,
    )
    max_held_mb: float = setting(
        256.0,
        "Most MB of request bodies read or waiting for their answer at once (each counted at its "
        "Content-Length); more get 503 with Retry-After.",
        PANEL,
        above=0,
    )
    max_waiting: int | None = setting(
        None,
        "/predict requests waiting beyond those; more get 503 with Retry-After.",
        PANEL,
        shown="what the model answers in a quarter of --timeout, measured at start, 8 to 256",
        minimum=0,
    )
    explain_active: int = setting(1, "/explain requests in progress at once.", PANEL, cli=False, minimum=1)
    explain_waiting: int = setting(4, "/explain requests waiting beyond those.", PANEL, cli=False, minimum=0)
    read_timeout_s: float = setting(
        20.0,
        "Seconds a request may take to arrive: slower headers close the connection, a slower body gets 408.",
        PANEL,
        flag="--read-timeout",
        above=0,
    )
    timeout_s: float = setting(
        60.0, "Seconds a request may wait and run before it gets 503.", PANEL, flag="--timeout", above=0
    )
    # past it the request gets 413 and its thread is free within one 64 KiB block of input
    decode_timeout_s: float = setting(
        10.0,
        "Seconds the decoding of one request's images may take; past it the request gets 413 and its "
        "thread is free at once.",
        PANEL,
        flag="--decode-timeout",
        above=0,
    )

    def check(self) -> None:
        """A UsageError naming the setting (and its flag) that is out of its bounds."""
        hints = typing.get_type_hints(ServeSettings)
        for item in dataclasses.fields(self):
            value, meta = getattr(self, item.name), item.metadata
            name = f"{meta['flag'] or '--' + item.name.replace('_', '-')} ({item.name})"
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UsageError(f"{name} must be a number, got {value!r}")
            if hints[item.name] in (int, int | None) and not float(value).is_integer():
                raise UsageError(f"{name} must be a whole number, got {value!r}")
            if meta.get("minimum") is not None and value < meta["minimum"]:
                raise UsageError(f"{name} must be at least {meta['minimum']:g}, got {value:g}")
            if meta.get("above") is not None and not value > meta["above"]:
                raise UsageError(f"{name} must be above {meta['above']:g}, got {value:g}")
        if self.max_held_mb < self.max_body_mb:
            raise UsageError(
                "--max-held-mb must be at least --max-body-mb (max_held_mb, max_body_mb): one body of the "
                "largest size must fit"
            )

    def sized(self, images_per_second: float) -> tuple[ServeSettings, str]:
        """These settings with `max_waiting` sized from the model's measured speed, and the line
        that says so: no more requests wait than the model answers in a quarter of the timeout
        (one image each), between 8 and 256, so that a request turned away is told at once
        instead of after the timeout."""
        if self.max_waiting is not None:
            return self, f"/predict: {self.max_active} at once, {self.max_waiting} waiting (--max-waiting)"
        waiting = int(min(256, max(8, images_per_second * self.timeout_s / 4)))
        line = (
            f"/predict: {self.max_active} at once (2 per core), {waiting} waiting (what the model answers, "
            f"at {images_per_second:,.0f} images/s, in a quarter of --timeout {self.timeout_s:g} s; "
            "--max-waiting sets it)"
        )
        return replace(self, max_waiting=waiting), line


def serve_settings() -> list:
    """The settings `imgclf serve` offers as flags (`imgclf.config.Setting`s, keyed by field name)."""
    return declared_settings(ServeSettings)
