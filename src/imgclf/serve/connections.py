"""The connections `imgclf serve` accepts: a deadline for a request's headers, and room for many.

uvicorn times out a keep-alive connection that sits idle between requests, but not one that is
opened and then sends its headers a byte at a time, or never (slowloris): each would hold a socket
for good. `deadline_protocol(seconds)` is uvicorn's HTTP/1.1 protocol with a deadline: a connection
whose request headers are not complete `seconds` after it opened (or after its last response) is
closed. A slow body is the application's to time out (408, `ServeSettings.read_timeout_s`).
"""

from __future__ import annotations

import asyncio
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_OPEN_FILES = 65_536


def deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol class, closing connections whose headers take over `seconds`."""

    class HeaderDeadlineProtocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # headers not complete yet: the clock runs
                self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle between requests: uvicorn's keep-alive timeout takes over

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.header_deadline is None:
                self.header_deadline = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _headers_too_slow(self) -> None:
            self.header_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (at most MAX_OPEN_FILES), so
    that many slow clients run into the header deadline before they run out the sockets; returns
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft
