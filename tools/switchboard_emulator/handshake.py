"""Everything decided before a WebSocket exists: routing, auth, injected refusals, admin HTTP.

Runs as websockets' `process_request`: returning a Response answers plain HTTP (admin endpoints)
or refuses the upgrade; returning None lets the handshake proceed.
"""

from __future__ import annotations

import email.utils
import hmac
import http
import logging
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .config import EmulatorConfig
from .faults import FaultError, Faults
from .records import Registry

AGENT_PATH: Final = "/v1/agent/converse"
ADMIN_PREFIX: Final = "/_emulator/"
AUTH_SUBPROTOCOLS: Final = ("token", "bearer")

log = logging.getLogger("switchboard_emulator.handshake")


def json_response(status: int, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def credential(headers: Headers) -> str | None:
    """The key or token the client presented: `Authorization: Token|Bearer x` or subprotocols `token, x`."""
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() in AUTH_SUBPROTOCOLS and value.strip():
        return value.strip()
    offered = [part.strip() for h in headers.get_all("Sec-WebSocket-Protocol") for part in h.split(",")]
    if len(offered) >= 2 and offered[0].lower() in AUTH_SUBPROTOCOLS and offered[1]:
        return offered[1]
    return None


def select_subprotocol(connection: ServerConnection, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    # Browsers that authenticate with ["token", key] expect "token" echoed back, or they drop the socket.
    for name in subprotocols:
        if name in AUTH_SUBPROTOCOLS:
            return name
    return None


class Gate:
    """The `process_request` callback."""

    def __init__(self, config: EmulatorConfig, faults: Faults, registry: Registry) -> None:
        self._api_key = config.api_key.get_secret_value() if config.api_key else None
        self._faults = faults
        self._registry = registry

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.startswith(ADMIN_PREFIX):
            return self._admin(url.path[len(ADMIN_PREFIX) :], parse_qs(url.query, keep_blank_values=True))
        if url.path != AGENT_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        key = credential(request.headers)
        if not key or (self._api_key is not None and not hmac.compare_digest(key, self._api_key)):
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Invalid credentials.\n")
        status = self._faults.take_rejection()
        if status is not None:
            log.info("fault: refusing handshake with %d", status)
            return connection.respond(status, f"Emulated refusal ({status}).\n")
        return None

    def _admin(self, route: str, query: dict[str, list[str]]) -> Response:
        if route == "healthz":
            return json_response(200, {"status": "ok", "active_sessions": len(self._registry.active)})
        if route == "faults":
            try:
                self._faults.apply(query)
            except FaultError as exc:
                return json_response(400, {"error": str(exc), "faults": self._faults.to_json()})
            log.info("faults set: %s", self._faults.to_json())
            return json_response(200, self._faults.to_json())
        if route == "sessions":
            tag = query.get("tag", [None])[-1]
            request_id = query.get("request_id", [None])[-1]
            return json_response(200, [r.to_json() for r in self._registry.find(tag, request_id)])
        return json_response(404, {"error": f"unknown admin endpoint {ADMIN_PREFIX}{route}"})
