"""Request dependencies as `Annotated` aliases: the bearer check, Redis clients, keys, settings."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as redis
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from switchboard.keys import Keys

from .console import sessions
from .settings import ControlSettings
from .sse_slots import SseSlots

RedisClient = redis.Redis  # named apart: inside State, `redis` is the field


@dataclass(slots=True)
class State:
    settings: ControlSettings
    keys: Keys
    redis: RedisClient  # short commands
    redis_block: RedisClient  # XREAD BLOCK waits (SSE, command acks): never starves short commands
    sse: SseSlots


def get_state(request: Request) -> State:
    state: State = request.app.state.control
    return state


bearer = HTTPBearer(auto_error=False, description="CONTROL_API_TOKEN")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    settings = get_state(request).settings
    if settings.control_api_token is None:
        return  # CONTROL_INSECURE_NO_AUTH: settings refused to start otherwise
    expected = settings.control_api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    # Constant time, and the same answer for missing and wrong tokens: nothing to probe.
    if credentials is None or not hmac.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


async def require_auth(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """The bearer token, or (without one) a console session cookie with its CSRF header on writes:
    the console's requests pass every other rule of the API unchanged."""
    if credentials is None and request.cookies.get(sessions.COOKIE):
        state = get_state(request)
        if state.settings.control_api_token is not None:
            await sessions.authorize(request, state.redis, state.keys.prefix, state.settings)
            return
    require_token(request, credentials)


StateDep = Annotated[State, Depends(get_state)]
Auth = Depends(require_auth)
