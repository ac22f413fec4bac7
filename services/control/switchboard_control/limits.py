"""The request body limit, applied before routing, authentication or parsing (pure ASGI).

FastAPI reads a JSON body before it runs the route's dependencies, the bearer check
included, so without a limit an anonymous 40 MB PUT was read into memory (and parsed) before
its 401. Here a body is refused by its declared Content-Length before a byte of it is read,
and a body without one (chunked) is counted as the application reads it and refused the
moment it passes the limit: at most `limit` bytes are ever held. The 413 carries
`Connection: close`, so the server stops reading the rest of the upload instead of draining it.

The limit depends on the path: Twilio's webhook (`/twiml…`) is a small form, everything else
gets CONTROL_MAX_BODY_BYTES.
"""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import refusals

TWIML_MAX_BODY = 64 * 1024
_CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes its limit: an HTTPException, so the
    application answers it with its usual error handling (FastAPI re-raises it as it is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", headers=_CLOSE)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, default_limit: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = default_limit
        # Longest prefix first, so that a more specific prefix wins.
        self.path_limits = sorted((path_limits or {}).items(), key=lambda item: -len(item[0]))

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.path_limits:
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limit_for(path)
        try:
            declared = declared_length(scope["headers"])
        except ValueError:
            refusals.count("bad_length", "request with an invalid Content-Length", path=path)
            await _answer(send, 400, "invalid Content-Length header")
            return
        if declared is not None and declared > limit:
            refusals.count("body_too_large", "request body over the limit", path=path, declared=declared,
                           limit=limit)
            await _answer(send, 413, f"request body over {limit} bytes")
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refusals.count("body_too_large", "streamed request body over the limit", path=path, limit=limit)
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a request, None without one; ValueError when it is not one number."""
    values = {value.strip() for name, value in headers if name.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        raise ValueError("conflicting Content-Length headers")
    value = values.pop()
    if not value.isdigit() or len(value) > 19:
        raise ValueError("Content-Length is not a number")
    return int(value)


async def _answer(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
