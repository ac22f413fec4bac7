"""Client-side function calls: Deepgram asks, this worker runs the function and answers.

A function with a `webhook` is POSTed there (timeout, retries, HMAC-signed so the receiver
can verify it came from Switchboard). `end_call` and `transfer_call` are built in. Every
request gets an answer: a failure answers with an error content rather than leaving the
agent silent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from switchboard import deepgram

from . import metrics

if TYPE_CHECKING:
    from .session import CallSession

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Switchboard-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`t=<unix>,v1=<hex hmac-sha256 of "t.body">`: the timestamp lets receivers refuse replays."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class FunctionRunner:
    def __init__(self, session: "CallSession") -> None:
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()

    def handle_request(self, msg: dict[str, Any]) -> None:
        for item in msg.get("functions") or ():
            if not isinstance(item, dict) or not item.get("client_side", True):
                continue  # server-side functions are Deepgram's to run
            task = asyncio.create_task(self._answer(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _answer(self, item: dict[str, Any]) -> None:
        call_id, name = str(item.get("id", "")), str(item.get("name", ""))
        arguments = str(item.get("arguments") or "{}")
        started = time.perf_counter()
        try:
            content, outcome = await self._run(name, arguments)
        except Exception as exc:  # task boundary: the agent must get an answer whatever happened
            log.exception("function %s failed", name, extra=self._session.extra)
            content, outcome = orjson.dumps({"error": f"function failed: {type(exc).__name__}"}).decode(), "error"
        metrics.FUNCTION_CALLS.labels(outcome).inc()
        self._session.send_to_agent(deepgram.function_call_response(call_id, name, content))
        self._session.event(
            "function_call",
            id=call_id,
            name=name,
            arguments=arguments,
            response=content,
            outcome=outcome,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _run(self, name: str, arguments: str) -> tuple[str, str]:
        session = self._session
        if name == "end_call":
            session.end_after_reply()
            return orjson.dumps({"ok": True, "note": "the call ends after your goodbye"}).decode(), "ok"
        if name == "transfer_call":
            return orjson.dumps(
                {"error": "transfer_call is not available: Twilio REST credentials are not configured"}
            ).decode(), "error"
        definition = session.settings.function(name)
        if definition is None or definition.webhook is None:
            return orjson.dumps({"error": f"function {name!r} is not available"}).decode(), "unknown"
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = arguments
        body = orjson.dumps(
            {"call_sid": session.call_sid, "stream_sid": session.stream_sid, "name": name, "arguments": parsed}
        )
        headers = {"Content-Type": "application/json"}
        secret = session.worker.settings.function_secret
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret.get_secret_value(), str(int(time.time())), body)
        hook = definition.webhook
        last_error = ""
        for attempt in range(hook.retries + 1):
            try:
                response = await session.worker.http.post(
                    str(hook.url), content=body, headers=headers, timeout=hook.timeout_s
                )
            except httpx.HTTPError as exc:
                last_error = type(exc).__name__
            else:
                if response.status_code < 300:
                    return _as_content(response), "ok"
                last_error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver rejected it; asking again will not help
            if attempt < hook.retries:
                await asyncio.sleep(0.2 * (attempt + 1))
        log.warning("function webhook %s failed: %s", name, last_error, extra=session.extra)
        return orjson.dumps({"error": f"function {name} failed: {last_error}"}).decode(), "error"


def _as_content(response: httpx.Response) -> str:
    # Deepgram wants a string; keep JSON compact and other text as it came.
    try:
        return orjson.dumps(response.json()).decode()
    except ValueError:
        return response.text
