"""Admission: how many requests a route runs and keeps waiting (`Gate`), the memory request bodies
may hold together (`HeldBodies`), the share of the processor explanations may take (`Pacing`), and
the size of one body (`BodySizeLimit`). Whatever is over its budget gets a clean 413 or 503 with
Retry-After at once, never an unbounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.serve.access import reply

# the share of the processor explanations may take while /predict has requests (see Pacing)
EXPLAIN_SHARE = 0.1
# a request whose images take more than this decoded goes to the large-image lane (a 12 MP phone PNG
# takes 36 MB; a 12 MP JPEG, decoded reduced for a 224-pixel model, 0.6 MB)
LARGE_REQUEST_BYTES = 24 * 2**20


class Gate:
    """Admission for one route: `active` requests run at once, `waiting` more wait for a turn; beyond
    that, or past the time limit, a request gets 503 with Retry-After at once."""

    def __init__(self, name: str, active: int, waiting: int, timeout_s: float) -> None:
        self.name, self.capacity, self.queue_size, self.timeout_s = name, active, waiting, timeout_s
        self.active = self.waiting = self.turned_away = 0
        self._slots: asyncio.Semaphore | None = None

    @property
    def full(self) -> bool:
        return self.active + self.waiting >= self.capacity + self.queue_size

    def _busy(self, why: str) -> HTTPException:
        self.turned_away += 1
        return HTTPException(503, f"{self.name} is busy ({why}); try again shortly", {"Retry-After": "1"})

    def refuse_if_full(self) -> None:
        """503 at once when the gate is full: asked before a request's body is read, so that a
        flood is turned away without the work of reading and parsing it."""
        if self.full:
            raise self._busy(f"{self.active} in progress, {self.waiting} waiting")

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        self.refuse_if_full()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise self._busy(f"no turn within {self.timeout_s:g} s") from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, by Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        await reply(send, 413, f"request body over the limit of {self.limit:,} bytes")


class HeldBodies:
    """The request bodies being read or waiting for their answer: their bytes together (a body counts
    at its Content-Length, else at the body limit, from before it is read) stay within `limit`;
    beyond it a request gets 503 with Retry-After at once. Bodies that trickle in (slowloris) hold
    little, so they never keep others out; bodies that are large and many cannot fill the memory."""

    def __init__(self, limit: int, body_limit: int) -> None:
        self.limit, self.body_limit = limit, body_limit
        self.held = self.turned_away = 0

    @property
    def full(self) -> bool:
        return self.held + self.body_limit > self.limit

    @contextlib.contextmanager
    def hold(self, request: Request) -> Iterator[None]:
        declared = request.headers.get("content-length", "")
        size = min(int(declared), self.body_limit) if declared.isdigit() else self.body_limit
        if self.held + size > self.limit:
            self.turned_away += 1
            raise HTTPException(
                503,
                f"the server holds {self.held / 1e6:,.0f} MB of requests already; try again shortly",
                {"Retry-After": "1"},
            )
        self.held += size
        try:
            yield
        finally:
            self.held -= size


class Pacing:
    """/predict first: while it has requests, an explanation (Grad-CAM, a backward pass through the
    network on the same cores) waits until the explanations before it have taken no more than
    `share` of the time since, so that a flood of /explain takes at most that share of the processor
    from ordinary predictions; with /predict idle, explanations run at once."""

    def __init__(self, share: float, busy: Callable[[], bool]) -> None:
        self.share, self.busy = share, busy
        self.next_turn = 0.0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        while time.monotonic() < self.next_turn and self.busy():
            time.sleep(0.02)
        started = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - started
            self.next_turn = time.monotonic() + spent * (1.0 / self.share - 1.0)


def lower_priority() -> None:
    """Run this thread at the lowest CPU priority (Linux: a thread's own nice value), so that the
    large-image lane decodes with the cores the ordinary requests leave idle."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
