"""Who may use imgclf's servers (`serve` and the `review` page), and what every answer tells the browser.

`AccessGuard` is one ASGI middleware in front of both:
- **Host.** Bound to loopback, a request whose `Host` names another machine gets 403 (DNS rebinding).
- **Token.** When the server has one, every request but the public paths carries it:
  `Authorization: Bearer TOKEN`, or `?token=TOKEN` as a link gives it. A request that changes
  something (any method but GET, HEAD and OPTIONS) must carry it as the header where the server
  says so (`query_token_changes=False`, the review page): an HTML form can send a query string but
  never a header.
- **Other sites.** A request that changes something and whose `Origin` names another origin, or
  whose `Sec-Fetch-Site` says `cross-site` or `same-site`, gets 403: a page the user has open on
  another site can make the browser send a form or a fetch to a server on loopback, and this is how
  the browser says so.
- **Framing and referrer.** Every answer says `X-Frame-Options: DENY`,
  `Content-Security-Policy: frame-ancestors 'none'` (no other page may frame it and turn key
  presses into decisions), `Referrer-Policy: no-referrer` (an address with the token never leaves
  in a Referer) and `X-Content-Type-Options: nosniff`.
- **Access log.** With `log_requests`, each request is logged on `imgclf.serve.access` (client,
  method, path, status, milliseconds) with any token removed from the query.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("imgclf.serve.access")

# What a browser fetches by itself, without the page's script (so without the token): nothing in
# them is about the model or the data. The page is the same for every server; it asks for the token
# when it has none (an app installed on the home screen opens "./", and finds the token in its storage).
PUBLIC_PATHS = ("/", "/manifest.webmanifest", "/icon.svg", "/icon-192.png", "/icon-512.png", "/health")
PUBLIC_PREFIXES = ("/docs-static/",)  # the API page's script and style
# The phone app at /app/: its page, runtime and icons are the same for every model; its model and
# model.json are this server's (the app's service worker fetches them with the token; the list is
# imgclf.export.formats.web.PRIVATE_FILES)
APP_PREFIX = "/app"
PRIVATE_APP_PATHS = frozenset({"/app/model.onnx", "/app/model.json"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
)
TOKEN_PARAMETER = "token"


@dataclass(frozen=True)
class Access:
    """Who may use the service: `token`, when set, must come with every request (an
    `Authorization: Bearer TOKEN` header, or `?token=TOKEN` as a link gives it; for requests that
    change something, the header only unless `query_token_changes`); `loopback_only` refuses
    requests whose Host header names another machine (DNS rebinding against a server bound to
    127.0.0.1); `log_requests` logs each request, its token removed."""

    token: str | None = None
    loopback_only: bool = False
    query_token_changes: bool = True
    log_requests: bool = False


def resolve_token(host: str, token: str | None, require_token: bool | None) -> str | None:
    """The token a server bound to `host` asks for: the one given, else $IMGCLF_TOKEN, else one made
    up when it is not bound to loopback (or `require_token`); None with `require_token` False."""
    if require_token is False:
        return None
    token = token or os.environ.get("IMGCLF_TOKEN") or None
    if token is None and (require_token or host not in LOOPBACK_HOSTS):
        token = secrets.token_urlsafe(24)
    return token


def host_name(value: bytes | str) -> str:
    """The host of a `Host` header's value (no port, no brackets), lower case."""
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip().lower()
    if text.startswith("["):  # [::1]:8000
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def redacted_target(path: str, query: bytes) -> str:
    """The request's path and query as a log shows it: a token's value replaced by `…`, the rest
    as sent."""
    if not query:
        return path
    pairs = query.decode("latin-1").split("&")
    shown = [
        f"{pair.split('=', 1)[0]}=…" if unquote_plus(pair.split("=", 1)[0]) == TOKEN_PARAMETER else pair
        for pair in pairs
    ]
    return f"{path}?{'&'.join(shown)}"


def cross_site(method: str, headers: dict[bytes, bytes]) -> str | None:
    """Why a request that changes something comes from another site (by what the browser says in
    `Sec-Fetch-Site` and `Origin`), or None."""
    if method in SAFE_METHODS:
        return None
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get(b"origin")
    if origin is None:
        return None  # not from a browser page (curl, scripts), or a browser that says nothing
    text = origin.decode("latin-1").strip().lower()
    parts = urlsplit(text)
    own = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if text == "null" or parts.scheme not in ("http", "https") or parts.netloc != own:
        return f"Origin: {text}"
    return None


class AccessGuard:
    """ASGI middleware: the rules of the module docstring, in front of every route."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                given = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in given]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is None:
                await self.app(scope, receive, guarded_send)
            else:
                await reply(guarded_send, *refusal)
        finally:
            if self.access.log_requests:
                self.log(scope, status[0], time.perf_counter() - started)

    def refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, detail, headers) of the answer a request gets instead of the route's, or None."""
        headers = dict(scope.get("headers") or [])
        method = scope.get("method", "GET")
        if self.access.loopback_only and host_name(headers.get(b"host", b"")) not in LOOPBACK_HOSTS:
            return 403, "this server answers requests for 127.0.0.1 and localhost only", []
        foreign = cross_site(method, headers)
        if foreign is not None:
            return 403, f"a request from another web site is refused ({foreign})", []
        path = scope.get("path", "")
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        public |= (path == APP_PREFIX or path.startswith(APP_PREFIX + "/")) and path not in PRIVATE_APP_PATHS
        if self.access.token is None or public:
            return None
        given = ""
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        elif method in SAFE_METHODS or self.access.query_token_changes:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query.get(TOKEN_PARAMETER, "")
        if hmac.compare_digest(given.encode(), self.access.token.encode()):
            return None
        if given == "" and method not in SAFE_METHODS and not self.access.query_token_changes:
            detail = "a request that changes something needs the token as an Authorization: Bearer header"
        else:
            detail = "a token is needed: open the address imgclf printed"
        return 401, detail, [(b"www-authenticate", b"Bearer")]

    def log(self, scope: Scope, status: int, seconds: float) -> None:
        client = scope.get("client") or ("-", 0)
        target = redacted_target(scope.get("path", ""), scope.get("query_string", b""))
        access_logger.info(
            '%s:%s "%s %s HTTP/%s" %d %.1f ms', client[0], client[1], scope.get("method", "-"), target,
            scope.get("http_version", "1.1"), status, seconds * 1000,
        )  # fmt: skip


def reachable_address(host: str) -> str:
    """The address other machines reach a server bound to `host` at: for 0.0.0.0 (or ::), this
    machine's address on its default route, found without sending anything (a UDP socket's
    connect only picks the route)."""
    import socket

    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
    except OSError:
        return host


def address_qr(address: str) -> str:
    """The address as a QR code drawn with block characters, for a phone's camera."""
    import io

    import segno

    drawn = io.StringIO()
    segno.make(address, error="m").terminal(out=drawn, compact=True)
    return drawn.getvalue()


async def reply(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    """A JSON error answer (`{"detail": …}`), sent directly from a middleware."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
