"""Console sessions: the API token exchanged once for a short-lived session in Redis.

The browser holds only an opaque session id in an HttpOnly, SameSite=Strict cookie (Secure
over https), so the API token never sits in the page, its storage or a URL. Redis keeps the
session under a hash of that id (a dump of Redis yields no usable cookie), with a CSRF token
that state-changing requests must echo in a header: SameSite=Strict already keeps other sites'
requests cookie-less, and the header is the second lock should a browser or a proxy ignore it.

A session lives CONSOLE_SESSION_TTL_S after its last use and never longer than
CONSOLE_SESSION_MAX_S after sign-in; signing out deletes it at once, so the old cookie stops
working on every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as redis
from fastapi import HTTPException, Request, status

from .. import refusals
from ..settings import ControlSettings

COOKIE = "sb_console"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ID_BYTES = 32


def session_key(prefix: str, session_id: str) -> str:
    digest = hashlib.sha256(session_id.encode()).hexdigest()
    return f"{prefix}console:session:{digest}"


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    csrf: str
    created_at: float


def token_matches(given: str, expected: str) -> bool:
    """Constant time, whatever the lengths."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def csrf_ok(method: str, header: str | None, session: Session) -> bool:
    """Reads need no CSRF token; every other method must carry the session's own."""
    if method.upper() in SAFE_METHODS:
        return True
    return header is not None and hmac.compare_digest(header.encode(), session.csrf.encode())


def expired(session: Session, now: float, max_age_s: int) -> bool:
    return now - session.created_at > max_age_s


def cookie_attributes(*, secure: bool, max_age_s: int) -> dict[str, object]:
    """What Starlette's set_cookie gets: no Domain (this host only), Path / (the API needs it too)."""
    return {"key": COOKIE, "httponly": True, "samesite": "strict", "secure": secure, "path": "/", "max_age": max_age_s}


class SessionStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int, max_age_s: int) -> None:
        self._redis, self._prefix, self.ttl_s, self.max_age_s = client, prefix, ttl_s, max_age_s

    async def create(self) -> Session:
        session = Session(secrets.token_urlsafe(_ID_BYTES), secrets.token_urlsafe(_ID_BYTES), time.time())
        key = session_key(self._prefix, session.session_id)
        await self._redis.hset(key, mapping={"csrf": session.csrf, "created_at": repr(session.created_at)})
        await self._redis.expire(key, self.ttl_s)
        return session

    async def get(self, session_id: str) -> Session | None:
        """The session, its idle timer renewed; None when unknown, idle too long or too old."""
        if not session_id or len(session_id) > 128:
            return None
        key = session_key(self._prefix, session_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.expire(key, self.ttl_s, xx=True)
        raw, _renewed = await pipe.execute()
        if not raw or b"csrf" not in raw:
            return None
        try:
            session = Session(session_id, raw[b"csrf"].decode(), float(raw.get(b"created_at", b"0")))
        except ValueError:
            return None
        if expired(session, time.time(), self.max_age_s):
            await self._redis.delete(key)
            return None
        return session

    async def delete(self, session_id: str) -> None:
        await self._redis.delete(session_key(self._prefix, session_id))


class SignInLimiter:
    """Failed sign-ins per client address in a sliding minute: the console's sign-in form must not
    become a faster way to guess the API token than the API itself (which answers 401 at once)."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute, self.window_s = per_minute, window_s
        self._failures: dict[str, list[float]] = {}

    def blocked(self, client: str, now: float) -> bool:
        recent = [t for t in self._failures.get(client, ()) if now - t < self.window_s]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return len(recent) >= self.per_minute

    def failed(self, client: str, now: float) -> None:
        self._failures.setdefault(client, []).append(now)
        if len(self._failures) > 10_000:  # bounded: forget the oldest clients first
            for stale in list(self._failures)[:1000]:
                del self._failures[stale]


async def authorize(request: Request, client: redis.Redis, prefix: str, settings: ControlSettings) -> Session:
    """The request's console session (its idle timer renewed), or 401; a write without the
    session's CSRF token is a 403. Each refusal is counted."""
    store = SessionStore(client, prefix, settings.console_session_ttl_s, settings.console_session_max_s)
    session = await store.get(request.cookies.get(COOKIE, ""))
    if session is None:
        refusals.count("console_session", "console request without a valid session", path=request.url.path)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "console session missing, expired or signed out",
                            headers={"WWW-Authenticate": "Bearer"})
    if not csrf_ok(request.method, request.headers.get(CSRF_HEADER), session):
        refusals.count("console_csrf", "console write without its CSRF token", path=request.url.path)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
    return session
