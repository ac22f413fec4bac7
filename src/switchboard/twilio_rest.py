"""Twilio's Calls API as Switchboard uses it: create a call, cancel or end it, fetch and list calls.

Form-encoded requests with Basic auth (the Account SID and auth token, or an API key SID and
secret: both are Twilio's documented ways), against a configurable base URL
(`https://api.twilio.com`, or the bundled emulator). Twilio's error body `{"code", "message",
"more_info", "status"}` becomes a `TwilioApiError` that says what it means (`kind`).

Retries, through `switchboard.retry`, bounded by attempts and a deadline:
- 429: after Twilio's `Retry-After` when it sends one (it does not document it; without it the
  usual backoff), as long as that wait fits the budget; then the 429 is raised with it;
- 5xx: retried a few times (the issue's rule; Twilio answers these when it did not act);
- a connection that could not be made: always retried (nothing was sent);
- a connection lost after the request went out: retried only for reads and for updates, which
  are idempotent. A create is not: a second one would dial the person twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from .retry import Retry

API_VERSION = "2010-04-01"
DEFAULT_RETRY = Retry(base_s=0.25, cap_s=2.0, attempts=3, deadline_s=15.0)
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")

# Twilio error codes with a meaning of their own for a caller of this API.
INVALID_TO = 21211
INVALID_FROM = 21212
UNVERIFIED_FROM = 21210
NOT_IN_PROGRESS = 21220  # an update of a call that has ended
AUTHENTICATE = 20003
NOT_FOUND = 20404


@dataclass(frozen=True, slots=True)
class Credentials:
    """`username` is the Account SID (with the auth token) or an API key SID (with its secret)."""

    account_sid: str
    username: str
    secret: str = field(repr=False)


class TwilioApiError(Exception):
    """Twilio answered with an error, or could not be reached (`status` 0)."""

    def __init__(self, status: int, code: int | None, message: str, *, more_info: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"Twilio {status or 'unreachable'}{f' {code}' if code else ''}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.more_info = more_info
        self.retry_after_s = retry_after_s

    @property
    def kind(self) -> str:
        """A small fixed set, for metrics and for the API's answer."""
        if self.status == 0:
            return "unreachable"
        if self.status == 401 or self.code == AUTHENTICATE:
            return "auth"
        if self.status == 429:
            return "rate_limited"
        if self.status >= 500:
            return "server"
        if self.code in (INVALID_TO, INVALID_FROM):
            return "invalid_number"
        if self.code == UNVERIFIED_FROM:
            return "caller_id"
        if self.status == 404 or self.code == NOT_FOUND:
            return "not_found"
        return "refused"


@dataclass(frozen=True, slots=True)
class Amd:
    """Asynchronous answering-machine detection for a new call."""

    status_callback: str
    timeout_s: int = 30
    speech_end_threshold_ms: int | None = None


def create_params(
    *, to: str, from_: str, url: str, status_callback: str, amd: Amd | None = None, ring_timeout_s: int = 30,
    time_limit_s: int | None = None,
) -> list[tuple[str, str]]:
    """The form of `POST Calls.json`, parameter names and values as Twilio documents them."""
    params = [("To", to), ("From", from_), ("Url", url), ("Method", "POST"),
              ("StatusCallback", status_callback), ("StatusCallbackMethod", "POST")]
    params += [("StatusCallbackEvent", event) for event in STATUS_EVENTS]
    params.append(("Timeout", str(ring_timeout_s)))
    if time_limit_s is not None:
        params.append(("TimeLimit", str(time_limit_s)))
    if amd is not None:
        params += [("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
                   ("AsyncAmdStatusCallback", amd.status_callback), ("AsyncAmdStatusCallbackMethod", "POST"),
                   ("MachineDetectionTimeout", str(amd.timeout_s))]
        if amd.speech_end_threshold_ms is not None:
            params.append(("MachineDetectionSpeechEndThreshold", str(amd.speech_end_threshold_ms)))
    return params


Observer = Callable[[str, str], None]  # (operation, result) for each attempt: metrics


class CallsApi:
    def __init__(self, http: httpx.AsyncClient, base_url: str, credentials: Credentials, *,
                 retry: Retry = DEFAULT_RETRY, max_retry_after_s: float = 10.0, timeout_s: float = 10.0,
                 observe: Observer | None = None, rng: random.Random | None = None) -> None:
        self._http = http
        self._calls = f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{credentials.account_sid}/Calls"
        self._auth = httpx.BasicAuth(credentials.username, credentials.secret)
        self._retry = retry
        self._max_retry_after_s = max_retry_after_s
        self._timeout_s = timeout_s
        self._observe = observe or (lambda op, result: None)
        self._rng = rng or random.Random()

    async def create(self, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """A new call (Twilio answers 201 with the Call resource, status `queued`)."""
        return await self._request("create", "POST", f"{self._calls}.json", data=params, resend_safe=False)

    async def update(self, sid: str, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        return await self._request("update", "POST", f"{self._calls}/{sid}.json", data=params, resend_safe=True)

    async def cancel(self, sid: str) -> dict[str, Any]:
        """Ends a queued or ringing call (`canceled`); no effect on an answered one (see `complete`)."""
        return await self.update(sid, [("Status", "canceled")])

    async def complete(self, sid: str) -> dict[str, Any]:
        """Hangs up the call, whatever it is doing."""
        return await self.update(sid, [("Status", "completed")])

    async def fetch(self, sid: str) -> dict[str, Any]:
        return await self._request("fetch", "GET", f"{self._calls}/{sid}.json", resend_safe=True)

    async def list(self, **filters: str) -> list[dict[str, Any]]:
        """The first page (newest first) of calls matching Twilio's filters (`To`, `From`, `Status`…)."""
        page = await self._request("list", "GET", f"{self._calls}.json", params={**filters, "PageSize": "50"},
                                   resend_safe=True)
        calls = page.get("calls")
        return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []

    async def _request(self, op: str, method: str, url: str, *, data: Sequence[tuple[str, str]] | None = None,
                       params: Mapping[str, str] | None = None, resend_safe: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        backoff = self._retry.backoff(unit=self._rng.random, clock=loop.time)
        # Encoded here: a repeated parameter (StatusCallbackEvent) is a list of pairs, which httpx's
        # `data=` does not take.
        body = urlencode(list(data)).encode() if data else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else None
        while True:
            try:
                response = await self._http.request(method, url, content=body, headers=headers, params=params,
                                                    auth=self._auth, timeout=self._timeout_s)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = TwilioApiError(0, None, f"{type(exc).__name__}: {exc}")
                pause = backoff.next_pause(exc)
            except httpx.HTTPError as exc:
                error = TwilioApiError(0, None, f"{type(exc).__name__}: {exc}")
                # The request may have reached Twilio: sending a create again could dial twice.
                pause = backoff.next_pause(exc) if resend_safe else None
            else:
                if response.status_code < 300:
                    self._observe(op, "ok")
                    return _json(response)
                error = _error(response)
                if error.status == 429:
                    pause = self._after_429(backoff, error)
                elif error.status >= 500:
                    pause = backoff.next_pause()
                else:
                    pause = None
            self._observe(op, error.kind)
            if pause is None:
                raise error
            await asyncio.sleep(pause)

    def _after_429(self, backoff: Any, error: TwilioApiError) -> float | None:
        pause = backoff.next_pause()
        if pause is None:
            return None
        wait = error.retry_after_s if error.retry_after_s is not None else pause
        if wait > self._max_retry_after_s or wait > backoff.remaining_s:
            return None  # too long to hold the caller of the API: they get the 429 and its Retry-After
        return wait


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(response: httpx.Response) -> TwilioApiError:
    body = _json(response)
    code = body.get("code")
    message = body.get("message")
    retry_after: float | None = None
    header = response.headers.get("Retry-After", "")
    try:
        retry_after = max(0.0, float(header)) if header else None
    except ValueError:
        retry_after = None  # an HTTP date: rare enough to fall back to the backoff
    return TwilioApiError(
        response.status_code,
        code if isinstance(code, int) else None,
        str(message)[:500] if message else f"HTTP {response.status_code}",
        more_info=str(body["more_info"])[:300] if body.get("more_info") else None,
        retry_after_s=retry_after,
    )
