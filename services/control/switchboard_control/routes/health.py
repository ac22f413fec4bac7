"""`/healthz` (alive), `/readyz` (Redis reachable) and `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from switchboard import capacity
from switchboard.config import redis_reachable

from .. import metrics
from ..deps import StateDep, bearer, require_token
from ..models import Health, Problem, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: StateDep) -> Response:
    redis_ok = await redis_reachable(state.redis)
    return JSONResponse(Readiness(ready=redis_ok, redis=redis_ok).model_dump(), status_code=200 if redis_ok else 503)


async def _metrics_auth(request: Request) -> None:
    if not request.app.state.control.settings.metrics_public:
        credentials = await bearer(request)
        require_token(request, credentials)


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(_metrics_auth)],
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
               401: {"model": Problem}},
)
async def prometheus_metrics(state: StateDep) -> Response:
    try:
        async with asyncio.timeout(1):
            metrics.LIVE_CALLS.set(await state.redis.zcard(state.keys.live_calls()))
            # Fresh at every scrape, not only as of the last /twiml decision (a quiet night
            # would otherwise show yesterday's figure).
            view, _held = await capacity.read(state.redis, state.keys)
            metrics.FLEET_FREE.set(max(0, view.free))
            metrics.ADMISSION_QUEUE.set(await state.redis.zcard(state.keys.admission_queue()))
    except (RedisError, TimeoutError, OSError):
        pass  # scrape the rest anyway; readyz reports Redis
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
