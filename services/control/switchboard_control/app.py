"""The FastAPI application: `create_app(settings)` wires routes, Redis clients, errors and metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.asyncio as redis
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from switchboard.config import keys_for, redis_client

from . import refusals
from .background import Background
from .console import routes as console
from .deps import State
from .limits import TWIML_MAX_BODY, BodyLimitMiddleware
from .metrics import MetricsMiddleware
from .outbound import callbacks as outbound_callbacks
from .outbound import campaign_routes
from .outbound import routes as outbound_routes
from .outbound.service import Outbound
from .routes import calls, ended, health, journal, twiml
from .routes import settings as settings_routes
from .routes import transfers as transfer_routes
from .routes import webhooks as webhook_routes
from .settings import ControlSettings
from .sse_slots import SseSlots

log = logging.getLogger(__name__)

DESCRIPTION = """Run Switchboard's phone agents: agent settings (default, profiles, per call),
live calls and their transcripts, live commands, and Twilio's TwiML webhook.

Every endpoint except `/healthz`, `/readyz`, `/metrics` (unless `METRICS_PUBLIC=false`) and
`/twiml` (Twilio's signature instead) needs `Authorization: Bearer <CONTROL_API_TOKEN>`.
Secrets inside settings (provider API keys, endpoint headers) are write-only: they read as
`"***"`, and sending `"***"` back keeps the stored value."""


def _blocking_client(settings: ControlSettings) -> redis.Redis:
    if settings.redis_cluster:
        return redis_client(settings, blocking=True)
    # Each SSE client and each command wait holds one connection while it blocks; when all are
    # busy, a new waiter queues for a moment instead of failing at once.
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_blocking_connections, timeout=5,
        socket_connect_timeout=3, socket_keepalive=True, socket_timeout=None,  # XREAD BLOCK sets its own limit
    )
    return redis.Redis(connection_pool=pool)


def create_app(settings: ControlSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = State(settings, keys_for(settings), redis_client(settings), _blocking_client(settings),
                      SseSlots(settings.control_sse_max_per_token, settings.control_sse_max_total))
        app.state.control = state
        app.state.background = background = Background(state)  # call.ended deliveries, transfers
        background.start()
        app.state.outbound = outbound = Outbound(state)  # outbound calls and campaigns
        await outbound.start()
        try:
            yield
        finally:
            await outbound.stop()
            await console.close_hub(app)
            await background.aclose()
            await state.redis.aclose()
            await state.redis_block.aclose()

    # The schema and its browsers map every endpoint for whoever asks: served only when asked for.
    docs = settings.control_public_docs
    app = FastAPI(
        title="Switchboard control API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        openapi_tags=[
            {"name": "settings", "description": "Agent settings: default, profiles, per call"},
            {"name": "calls", "description": "Live calls, transcripts, events and commands"},
            {"name": "twilio", "description": "Twilio's voice webhook"},
            {"name": "outbound", "description": "Outbound calls: place one, cancel it while it rings"},
            {"name": "campaigns", "description": "Paced campaigns of outbound calls"},
            {"name": "webhooks", "description": "call.ended deliveries: the outbox, dead letters, recording links"},
            {"name": "health", "description": "Liveness, readiness, metrics"},
        ],
    )
    app.add_middleware(MetricsMiddleware)
    # Added last, so it runs first: nothing (routing, auth, parsing) reads a body it refuses.
    app.add_middleware(BodyLimitMiddleware, default_limit=settings.control_max_body_bytes,
                       path_limits={"/twiml": TWIML_MAX_BODY, "/twilio": TWIML_MAX_BODY})
    app.add_exception_handler(RequestValidationError, _invalid_input)  # type: ignore[arg-type]
    app.add_exception_handler(RecursionError, _too_deep)  # type: ignore[arg-type]
    app.add_exception_handler(RedisError, _redis_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(orjson.JSONEncodeError, _unencodable)  # type: ignore[arg-type]
    # `ended` before `calls`: /v1/calls/ended is a listing, not a callSid.
    for module in (health, settings_routes, ended, calls, journal, twiml):
        app.include_router(module.router)
    for router in (transfer_routes.router, transfer_routes.api, webhook_routes.router, webhook_routes.public):
        app.include_router(router)
    for module in (outbound_routes, campaign_routes, outbound_callbacks):
        app.include_router(module.router)
    if settings.console_enabled:
        app.include_router(console.page)
        app.include_router(console.api)
    return app


# Validation error types that mean "over a bound" rather than "wrong": counted as refusals.
_LIMIT_ERRORS = {"too_deep": "too_deep", "too_large": "field_limit", "too_many_fields": "field_limit",
                 "string_too_long": "field_limit", "too_long": "field_limit"}


async def _invalid_input(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default echoes the input back; in settings that may be an API key.
    errors: list[dict[str, Any]] = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "invalid")), "type": str(error.get("type", ""))}
        for error in exc.errors()
    ]
    for reason in sorted({_LIMIT_ERRORS[e["type"]] for e in errors if e["type"] in _LIMIT_ERRORS}):
        refusals.count(reason, "request over a size or depth limit", path=request.url.path,
                       fields=[".".join(map(str, e["loc"])) for e in errors][:5])
    return JSONResponse({"detail": errors}, status_code=422)


async def _too_deep(request: Request, _exc: RecursionError) -> JSONResponse:
    # Bounds on every open-ended field keep input far from Python's recursion limit; should one
    # be missed, the client still gets its 4xx and the reason is counted, not a 500.
    refusals.count("too_deep", "request nested too deep to process", path=request.url.path)
    detail = [{"loc": ["body"], "msg": "nested too deep to process", "type": "too_deep"}]
    return JSONResponse({"detail": detail}, status_code=422)


async def _unencodable(_request: Request, exc: orjson.JSONEncodeError) -> JSONResponse:
    # Valid JSON in, but not storable: integers beyond 64 bits, lone UTF-16 surrogates ("\\ud800").
    message = f"the request holds a value that cannot be stored: {exc}"
    return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "unencodable"}]}, status_code=422)


async def _redis_unavailable(request: Request, exc: RedisError) -> JSONResponse:
    log.warning("redis failed during %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse({"detail": "redis is unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
