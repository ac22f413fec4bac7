"""The caller's context, before the agent says a word: templates in the prompt and greeting, filled
from what is known about the call, and the optional pre-call lookup (a CRM).

Context, later sources winning (`switchboard.templates.call_context`): the stream's parameters
(From, To, CallerName, any `<Parameter>`), an outbound call's `context`, then the lookup's answer.
The lookup is the profile's `precall` webhook: POSTed the call's numbers and parameters (signed
like function webhooks, through `switchboard.egress`), it answers
`{"context": {...}, "settings": {...}}`: template values, and settings overrides merged into the
call's settings (validated like any settings document; `precall` itself cannot be changed).

The lookup is bounded by its `timeout_s` and nothing else: a slow, failing or refused lookup
costs the greeting at most that long, and the call goes on without it. Its answer is kept on the
call record, so a takeover or a new stream of the same call reuses it instead of asking again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from switchboard import egress, outbound, templates
from switchboard.agent_settings import AgentSettings
from switchboard.messages import CallField, Event
from switchboard.metrics import LATENCY_BUCKETS
from switchboard.outbound import OutboundKeys
from switchboard.webhook_signature import HEADER, sign

from .port import WorkerPort

log = logging.getLogger(__name__)

LOOKUPS = Counter("switchboard_worker_precall_total",
                  "Pre-call lookups by outcome (ok|reused|failed|refused|late|invalid)", ["outcome"])
LOOKUP_TIME = Histogram("switchboard_worker_precall_seconds", "Pre-call lookup time, answered or not",
                        buckets=LATENCY_BUCKETS)
MAX_ANSWER_BYTES = 32 * 1024
_PRIVATE = ("sb_token", "sb_resume_of")


class PrecallHandle(Protocol):
    call_sid: str
    stream_sid: str
    call_key: str
    extra: dict[str, str]
    port: WorkerPort

    def event(self, kind: str, /, **data: Any) -> None: ...


async def personalize(session: PrecallHandle, meta: dict[bytes, bytes], settings: AgentSettings) -> AgentSettings:
    """`settings` with the lookup's overrides applied and the templates filled for this call."""
    params = call_parameters(meta)
    answer = await _stored(session, meta)
    if answer is None and settings.precall is not None:
        answer = await _lookup(session, settings, params, meta)
    answer = answer or {}
    overrides = answer.get("settings")
    if isinstance(overrides, dict) and overrides:
        settings = _merged(session, settings, overrides)
    info = await outbound.load(session.port.redis, OutboundKeys(session.port.keys.prefix), session.call_sid)
    context = templates.call_context(params, info.context if info else None,
                                     answer.get("context") if isinstance(answer.get("context"), dict) else None)
    try:
        return templates.fill_settings(settings, context)
    except ValidationError as exc:  # a filled prompt past its bound: the unfilled one is better than none
        log.warning("templates not filled: %d error(s)", exc.error_count(), extra=session.extra)
        return settings


async def _stored(session: PrecallHandle, meta: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The answer a previous session of this call got: on this record (takeover) or the one it resumes."""
    raw: Any = meta.get(CallField.PRECALL.encode())
    resume_of = meta.get(CallField.RESUME_OF.encode(), b"").decode()
    if not raw and resume_of:
        raw = await session.port.redis.hget(session.port.keys.call(resume_of), CallField.PRECALL)
    if not raw:
        return None
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(answer, dict):
        LOOKUPS.labels("reused").inc()
        if not meta.get(CallField.PRECALL.encode()):
            session.port.bookkeeping.write(session.call_key, {CallField.PRECALL: raw})
        return answer
    return None


async def _lookup(session: PrecallHandle, settings: AgentSettings, params: dict[str, str],
                  meta: dict[bytes, bytes]) -> dict[str, Any] | None:
    hook = settings.precall
    assert hook is not None
    port = session.port
    config = port.settings
    body = orjson.dumps({
        "call_sid": session.call_sid, "stream_sid": session.stream_sid,
        "from": params.get("From"), "to": params.get("To"), "caller_name": params.get("CallerName"),
        "direction": params.get("Direction"), "profile": meta.get(b"profile", b"").decode() or None,
        "parameters": {k: v for k, v in params.items() if k not in _PRIVATE},
    })
    headers = {"Content-Type": "application/json"}
    if config.function_secret is not None:
        headers[HEADER] = sign(config.function_secret.get_secret_value(), str(int(time.time())), body)
    started = time.perf_counter()
    outcome, answer, detail = "ok", None, ""
    try:
        # One attempt, one deadline: the caller is waiting for the greeting.
        reply = await egress.post(port.http, str(hook.url), content=body, headers=headers, deadline_s=hook.timeout_s,
                                  max_bytes=min(config.worker_webhook_max_bytes, MAX_ANSWER_BYTES),
                                  policy=config.egress_policy)
    except egress.Refused as refused:
        outcome = "late" if refused.reason == "deadline" else "refused"
        detail = str(refused.reason)
    else:
        detail = f"HTTP {reply.status}"
        answer = _answer(reply) if reply.status < 300 else None
        if reply.status >= 300:
            outcome = "failed"
        elif answer is None:
            outcome, detail = "invalid", "not a JSON object"
    took = time.perf_counter() - started
    LOOKUPS.labels(outcome).inc()
    LOOKUP_TIME.observe(took)
    ms = round(took * 1000, 1)
    if answer is None:
        log.warning("pre-call lookup %s (%s) after %.0f ms; the call goes on without it", outcome, detail, ms,
                    extra=session.extra)
        session.event(Event.PRECALL, outcome=outcome, detail=detail, ms=ms)
        return None
    context = answer.get("context")
    overrides = answer.get("settings")
    # Names only: the values are the caller's personal data, and they are in the record already.
    session.event(Event.PRECALL, outcome="ok", ms=ms,
                  context=sorted(context)[:50] if isinstance(context, dict) else [],
                  overrides=sorted(overrides)[:20] if isinstance(overrides, dict) else [])
    port.bookkeeping.write(session.call_key, {CallField.PRECALL: orjson.dumps(answer)})
    return answer


def _answer(reply: egress.Reply) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    return {key: doc[key] for key in ("context", "settings") if isinstance(doc.get(key), dict)}


def _merged(session: PrecallHandle, settings: AgentSettings, overrides: dict[str, Any]) -> AgentSettings:
    """`overrides` merged into `settings` (dicts key by key, anything else replaced), validated."""
    doc = settings.model_dump(mode="json", exclude_none=True)
    merged = _merge(doc, {k: v for k, v in overrides.items() if k != "precall"})
    try:
        return AgentSettings.model_validate(merged)
    except ValidationError as exc:
        LOOKUPS.labels("invalid").inc()
        log.warning("pre-call settings overrides refused: %d error(s), first at %s", exc.error_count(),
                    ".".join(map(str, exc.errors()[0]["loc"])), extra=session.extra)
        session.event(Event.PRECALL, outcome="invalid", detail="settings overrides refused")
        return settings


def _merge(base: dict[str, Any], update: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and depth < 8:
            out[key] = _merge(out[key], value, depth + 1)
        else:
            out[key] = value
    return out


def call_parameters(meta: dict[bytes, bytes]) -> dict[str, str]:
    """The call's TwiML <Parameter>s from its record (empty when absent or unreadable)."""
    try:
        params = orjson.loads(meta.get(CallField.PARAMS.encode(), b"{}"))
    except orjson.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}
