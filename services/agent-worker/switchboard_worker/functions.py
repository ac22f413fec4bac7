"""Client-side function calls: Deepgram asks, this worker runs the function and answers.

A function with a `webhook` is POSTed there (HMAC-signed so the receiver can verify it came
from Switchboard) through `switchboard.egress`: public https addresses only unless the
operator's allow-list says otherwise, one deadline per attempt, the answer capped in bytes,
5xx/429/transport failures retried with jittered backoff inside the function's time budget.
`end_call`, `transfer_call` and `collect_digits` (the caller keys digits in, see
switchboard.conversation.dtmf) are built in (declare them in the profile's functions without
a webhook). Every request gets an answer: a failure answers with an error content rather
than leaving the agent silent.

transfer_call hands the call to `transfer.py` (cold or warm, through Twilio's REST API with
TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN on the worker), and only to a destination the profile's
`transfer.destinations` or the function's `destinations` allow: the arguments come from an LLM,
which a caller can talk into anything, so an open transfer would be a toll-fraud hole.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from typing import Any

import orjson

from switchboard import deepgram, egress, webhook_signature
from switchboard.agent_settings import WebhookEndpoint
from switchboard.messages import Event

from . import metrics
from .port import CallHandle

log = logging.getLogger(__name__)

class FunctionRunner:
    def __init__(self, session: CallHandle) -> None:
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
            content, outcome = await self._run(call_id, name, arguments)
        except Exception as exc:  # task boundary: the agent must get an answer whatever happened
            log.exception("function %s failed", name, extra=self._session.extra)
            content, outcome = _error(f"function failed: {type(exc).__name__}"), "error"
        metrics.FUNCTION_CALLS.labels(outcome).inc()
        self._session.send_to_agent(deepgram.function_call_response(call_id, name, content))
        self._session.event(Event.FUNCTION_CALL,
            id=call_id,
            name=name,
            arguments=arguments,
            response=content,
            outcome=outcome,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _run(self, call_id: str, name: str, arguments: str) -> tuple[str, str]:
        session = self._session
        if name == "end_call":
            session.request_hangup("end_call", after_reply=True)
            return orjson.dumps({"ok": True, "note": "the call ends after your goodbye"}).decode(), "ok"
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = arguments
        definition = session.settings.function(name)
        if name == "collect_digits" and (definition is None or definition.webhook is None):
            return await session.collect_digits(call_id, parsed), "ok"
        if name == "transfer_call" and (definition is None or definition.webhook is None):
            return self._transfer(parsed)  # carried out by transfer.py once the agent's goodbye has played
        if definition is None or definition.webhook is None:
            return _error(f"function {name!r} is not available"), "unknown"
        # A masked keypad entry's reference becomes its digits here, for the customer's own system only.
        body = orjson.dumps({"call_sid": session.call_sid, "stream_sid": session.stream_sid, "name": name,
                             "arguments": session.reveal_digits(parsed)})
        headers = {"Content-Type": "application/json"}
        secret = session.port.settings.function_secret
        if secret is not None:
            timestamp = str(int(time.time()))
            headers[webhook_signature.HEADER] = webhook_signature.sign(secret.get_secret_value(), timestamp, body)
        return await self._call_webhook(call_id, name, definition.webhook, body, headers)

    async def _call_webhook(
        self, call_id: str, name: str, hook: WebhookEndpoint, body: bytes, headers: dict[str, str]
    ) -> tuple[str, str]:
        session = self._session
        config = session.port.settings
        extra = {**session.extra, "function": name, "function_call_id": call_id}

        def failed(attempt: int, failure: egress.Refused | egress.Reply) -> None:
            if isinstance(failure, egress.Refused):
                metrics.WEBHOOK_REFUSED.labels(failure.reason).inc()
                log.warning("function webhook attempt %d refused: %s", attempt + 1, failure, extra=extra)
            else:
                log.warning("function webhook attempt %d answered HTTP %d", attempt + 1, failure.status, extra=extra)

        try:
            reply = await egress.post_with_retries(
                session.port.http, str(hook.url), content=body, headers=headers,
                attempts=hook.retries + 1, attempt_timeout_s=hook.timeout_s,
                # The agent (and the caller) wait for this answer: retries share the time the
                # attempts would have had, they never add to it.
                budget_s=hook.timeout_s * (hook.retries + 1),
                max_bytes=config.worker_webhook_max_bytes, policy=config.egress_policy,
                on_failure=failed, rng=session.port.random,
            )
        except egress.Refused as refused:
            return _error(f"function {name} failed: {_for_agent(refused)}"), "error"
        if reply.status >= 300:
            return _error(f"function {name} failed: HTTP {reply.status}"), "error"
        content = _as_content(reply)
        if len(content.encode()) > config.worker_webhook_max_bytes:  # decoding can widen invalid bytes
            metrics.WEBHOOK_REFUSED.labels("too_large").inc()
            log.warning("function webhook answer grew past the cap when decoded as text", extra=extra)
            return _error(f"function {name} failed: the answer is too large"), "error"
        return content, "ok"

    def _transfer(self, arguments: Any) -> tuple[str, str]:
        args = arguments if isinstance(arguments, dict) else {}
        to, mode, summary = args.get("to"), args.get("mode"), args.get("summary")
        ok, detail = self._session.transfer(
            to if isinstance(to, str) else None, mode if isinstance(mode, str) else None, by="agent",
            summary=summary[:1000] if isinstance(summary, str) and summary else None, expect_reply=True,
        )
        if not ok:
            return _error(detail), "error"
        note = "Tell the caller you are transferring them now; the call moves once you have finished speaking."
        return orjson.dumps({"ok": True, "note": note}).decode(), "ok"


def _for_agent(refused: egress.Refused) -> str:
    # The agent may repeat this to the caller: say what went wrong, not which internal address
    # the webhook's host resolved to (that detail is in the worker's log).
    match refused.reason:
        case "private_address" | "scheme" | "bad_url":
            return "its webhook address is not allowed"
        case "deadline" | "too_large" | "encoding":
            return refused.detail
        case _:
            return f"the webhook could not be reached ({refused.reason})"


def _error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _as_content(reply: egress.Reply) -> str:
    # Deepgram wants a string; keep JSON compact and other text as it came.
    try:
        return orjson.dumps(orjson.loads(reply.body)).decode()
    except orjson.JSONDecodeError:
        return reply.body.decode(_charset(reply.headers.get("Content-Type", "")), errors="replace")


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                break
    return "utf-8"
