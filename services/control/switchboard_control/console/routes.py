"""The console's routes: the page and its assets, sign-in/out, the live feed, fleet and call rows.

The page and its assets need no session (they hold no data); every data route needs the API's
own authentication (`deps.Auth`: a bearer token, or the console session and its CSRF token),
so the console can do nothing a token holder could not do with curl. Assets are read from the
package once at startup and served with a Content-Security-Policy that allows only this
origin: no CDN, no inline script, nothing framed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

from .. import callstate, refusals
from ..deps import Auth, StateDep
from ..models import CALL_SID
from . import fleet, sessions, table
from .hub import Hub, sse

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
KEEPALIVE_S = 15.0


def _load_assets() -> dict[str, tuple[bytes, str, str]]:
    assets = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            body = path.read_bytes()
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                kind = "text/javascript"
            charset = "; charset=utf-8" if kind.startswith("text") else ""
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[path.relative_to(STATIC).as_posix()] = (body, kind + charset, etag)
    return assets


ASSETS = _load_assets()
page = APIRouter(prefix="/console", include_in_schema=False)
api = APIRouter(prefix="/console/api", dependencies=[Auth], include_in_schema=False)


def _asset(name: str, request: Request, *, cache: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such console file")
    body, kind, etag = found
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": cache}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=kind, headers=headers)


@page.get("")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@page.get("/")
async def console_page(request: Request) -> Response:
    return _asset("index.html", request, cache="no-cache")


@page.get("/static/{name:path}")
async def console_static(name: str, request: Request) -> Response:
    return _asset(name, request, cache="no-cache")


# --- sign-in and out ---------------------------------------------------------------------------
class SignIn(BaseModel):
    token: str = Field(..., min_length=1, max_length=512, description="CONTROL_API_TOKEN")


class ConsoleSession(BaseModel):
    csrf: str
    idle_timeout_s: int
    grafana_url: str | None = None


def _limiter(request: Request) -> sessions.SignInLimiter:
    limiter = getattr(request.app.state, "console_signin", None)
    if limiter is None:
        settings = request.app.state.control.settings
        limiter = request.app.state.console_signin = sessions.SignInLimiter(settings.console_signin_failures_per_min)
    return limiter


def _session_body(state: Any, csrf: str) -> ConsoleSession:
    grafana = state.settings.console_grafana_url
    return ConsoleSession(csrf=csrf, idle_timeout_s=state.settings.console_session_ttl_s,
                          grafana_url=grafana if grafana and grafana.startswith(("https://", "http://")) else None)


@page.post("/session", response_model=ConsoleSession)
async def sign_in(
    body: Annotated[SignIn, Body()], request: Request, response: Response, state: StateDep
) -> ConsoleSession:
    """Exchange the API token for a console session (a cookie the page cannot read)."""
    client = request.client.host if request.client else "?"
    limiter, now = _limiter(request), time.monotonic()
    if limiter.blocked(client, now):
        refusals.count("console_signin_limit", "too many failed console sign-ins", client=client)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many failed sign-ins: wait a minute",
                            headers={"Retry-After": "60"})
    expected = state.settings.control_api_token
    if expected is not None and not sessions.token_matches(body.token, expected.get_secret_value()):
        limiter.failed(client, now)
        refusals.count("console_signin", "console sign-in with a wrong token", client=client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong token")
    store = sessions.SessionStore(state.redis, state.keys.prefix, state.settings.console_session_ttl_s,
                                  state.settings.console_session_max_s)
    session = await store.create()
    response.set_cookie(value=session.session_id, **sessions.cookie_attributes(  # type: ignore[arg-type]
        secure=request.url.scheme == "https", max_age_s=state.settings.console_session_max_s))
    response.headers["Cache-Control"] = "no-store"
    log.info("console sign-in", extra={"client": client})
    return _session_body(state, session.csrf)


@page.get("/session", response_model=ConsoleSession)
async def current_session(request: Request, response: Response, state: StateDep) -> ConsoleSession:
    """The signed-in page's CSRF token after a reload (readable only by this origin's scripts)."""
    session = await sessions.authorize(request, state.redis, state.keys.prefix, state.settings)
    response.headers["Cache-Control"] = "no-store"
    return _session_body(state, session.csrf)


@page.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
async def sign_out(request: Request, state: StateDep) -> Response:
    """End the session on every replica at once (its cookie stops working)."""
    session = await sessions.authorize(request, state.redis, state.keys.prefix, state.settings)
    store = sessions.SessionStore(state.redis, state.keys.prefix, 1, 1)
    await store.delete(session.session_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


# --- data ----------------------------------------------------------------------------------------
def hub_of(request: Request) -> Hub:
    hub = getattr(request.app.state, "console_hub", None)
    if hub is None:
        settings = request.app.state.control.settings
        hub = Hub(request.app.state.control, table_interval_s=settings.console_table_interval_s,
                  max_rows=settings.console_max_rows)
        request.app.state.console_hub = hub
    return hub


async def close_hub(app: Any) -> None:
    hub = getattr(app.state, "console_hub", None)
    if hub is not None:
        await hub.close()


@api.get("/live")
async def live_feed(request: Request, state: StateDep, table: bool = True,
                    call: Annotated[str | None, Query(pattern=CALL_SID)] = None) -> StreamingResponse:
    """Server-sent events for one tab: the live-calls table (snapshot, then changed rows) and,
    with `call`, that call's events (history, then live)."""
    hub = hub_of(request)
    stream_sid = None
    if call is not None:
        stream_sid = (await callstate.require(state, call)).stream_sid
    if hub.subscribers >= state.settings.console_max_streams:
        refusals.count("console_stream_limit", "too many console live feeds", open=hub.subscribers)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many console tabs open: close one",
                            headers={"Retry-After": "5"})
    subscriber = await hub.subscribe(table_wanted=table, stream_sid=stream_sid)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                if message is None:
                    return
                yield message
        finally:
            hub.unsubscribe(subscriber)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@api.get("/fleet")
async def fleet_view(request: Request, state: StateDep) -> dict[str, Any]:
    rows, _total = await hub_of(request).read_rows()
    return await fleet.snapshot(state, list(rows.values()))


@api.get("/calls/{call_sid}")
async def call_row(call_sid: Annotated[str, PathParam(pattern=CALL_SID)], state: StateDep) -> dict[str, Any]:
    """One call's row as the table shows it (direction, numbers, AMD, transfers), live or ended."""
    record = await callstate.require(state, call_sid)
    fields = {**record.fields}
    fields.setdefault("stream_sid", record.stream_sid)
    return {**table.row(fields), "call_sid": call_sid, "parameters": table.parameters(fields)}


__all__ = ["api", "close_hub", "page", "sse"]
