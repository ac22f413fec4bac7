"""Requests the emulator makes as Twilio: status callbacks, TwiML fetches, AMD verdicts, conference events.

Signed like Twilio signs them (X-Twilio-Signature: base64 HMAC-SHA1, keyed with the
account's auth token, over the URL plus the POST parameters sorted by name; for GET the
parameters go into the query and the whole URL is signed), with Twilio's headers. Twilio
does not retry status callbacks; neither does this. Every request and its answer is logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from switchboard import signature

from .records import Log

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024  # TwiML is small; Twilio refuses documents over 64 KB
USER_AGENT = "TwilioProxy/1.1"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    body: bytes = b""
    error: str | None = None
    content_type: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Webhooks:
    def __init__(self, http: httpx.AsyncClient, auth_token: str, log_: Log, timeout_s: float) -> None:
        self._http = http
        self._token = auth_token
        self._log = log_
        self._timeout_s = timeout_s

    async def send(self, kind: str, url: str, method: str, params: Mapping[str, str], *,
                   call_sid: str | None = None) -> Answer:
        """One signed request; never raises for what the receiver does (the answer says it)."""
        params = {k: v for k, v in params.items() if v is not None}
        headers = {
            "User-Agent": USER_AGENT,
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "X-Home-Region": "us1",
            "Accept": "*/*",
        }
        if method == "GET":
            target = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}" if params else url
            headers["X-Twilio-Signature"] = signature.compute(self._token, target)
            request = self._http.build_request("GET", target, headers=headers, timeout=self._timeout_s)
        else:
            target = url
            headers["X-Twilio-Signature"] = signature.compute(self._token, url, params)
            headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
            request = self._http.build_request("POST", url, content=urlencode(params).encode(), headers=headers,
                                               timeout=self._timeout_s)
        started = time.monotonic()
        answer = await self._exchange(request)
        self._log.add(
            kind=kind, call_sid=call_sid, method=method, url=target, params=params,
            signature=headers["X-Twilio-Signature"], status=answer.status, error=answer.error,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        if not answer.ok:
            log.info("%s to %s answered %s %s", kind, url, answer.status, answer.error or "",
                     extra={"call_sid": call_sid})
        return answer

    async def _exchange(self, request: httpx.Request) -> Answer:
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            return Answer(None, error=f"{type(exc).__name__}: {exc}"[:300])
        try:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return Answer(response.status_code, error="answer larger than 64 KB")
            return Answer(response.status_code, body, content_type=response.headers.get("content-type", ""))
        except httpx.HTTPError as exc:
            return Answer(response.status_code, error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            await response.aclose()
