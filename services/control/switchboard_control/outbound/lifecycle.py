"""What Twilio's callbacks about an outbound call change: its status (in order, once), its end
(outcome, slot released, metrics, the campaign told), its answering-machine verdict (recorded,
and sent to the worker holding the call), and the user's status webhook.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import get_args

from switchboard import entries, messages, outbound
from switchboard import keys as keyspace
from switchboard.outbound import FINAL, OField, TwilioStatus

from ..deps import State
from . import metrics, slots
from .dialer import Dialer
from .store import OutboundStore
from .webhooks import StatusWebhooks

log = logging.getLogger(__name__)

Ended = Callable[[dict[str, str], str], Awaitable[None]]  # (record, outcome): a campaign's destination moves on
ANSWERED_BY = frozenset(get_args(messages.AnsweredBy))


class Lifecycle:
    def __init__(self, state: State, store: OutboundStore, dialer: Dialer, webhooks: StatusWebhooks) -> None:
        self.state = state
        self.store = store
        self.dialer = dialer
        self.webhooks = webhooks
        self.on_ended: Ended | None = None

    async def record_for(self, kind: str, ref: str, call_sid: str) -> dict[str, str] | None:
        """The record a signed callback names, if the callSid it carries is this record's."""
        record = await self.store.get(ref) if ref else None
        if record is None:
            metrics.CALLBACKS.labels(kind, "unknown_call").inc()
            return None
        bound = record.get(OField.CALL_SID)
        if bound and call_sid and bound != call_sid:
            metrics.CALLBACKS.labels(kind, "wrong_call").inc()
            log.warning("callback for another call than its record's", extra={"ref": ref, "call_sid": call_sid[:64]})
            return None
        if not bound and call_sid:
            await self.dialer.bind(ref, call_sid)
            record[OField.CALL_SID] = call_sid
        return record

    async def status(self, ref: str, form: dict[str, str]) -> None:
        call_sid = form.get("CallSid", "")
        record = await self.record_for("status", ref, call_sid)
        if record is None:
            return
        status = form.get("CallStatus", "")
        extra: dict[str, str] = {}
        if status == TwilioStatus.IN_PROGRESS:
            extra[OField.ANSWERED_AT] = repr(time.time())
        if form.get("CallDuration", "").isdigit():
            extra[OField.DURATION_S] = form["CallDuration"]
        if form.get("SipResponseCode", "").isdigit():
            extra[OField.SIP_CODE] = form["SipResponseCode"]
        moved = await self.store.apply_status(ref, status, extra)
        if moved is None:
            metrics.CALLBACKS.labels("status", "stale").inc()
            return
        metrics.CALLBACKS.labels("status", "ok").inc()
        metrics.STATUSES.labels(status).inc()
        fields = moved.fields
        ids = {"call_sid": call_sid, "ref": ref, "status": status, "campaign": fields.get(OField.CAMPAIGN, "")}
        log.info("outbound call %s", status, extra=ids)
        if status not in FINAL:
            self.webhooks.send(fields.get(OField.WEBHOOK), _payload(fields, status))
            return
        await self._ended(ref, call_sid, status, fields, form)

    async def _ended(self, ref: str, call_sid: str, status: str, fields: dict[str, str], form: dict[str, str]) -> None:
        state = self.state
        stream_outcome = await self.store.stream_outcome(call_sid) if status == TwilioStatus.COMPLETED else None
        outcome = outbound.outcome(status, stream_outcome)
        # A call that never connected gives its slot back now, not when the reservation lapses.
        await slots.release(state.redis, state.keys, ref, call_sid)
        await self.store.end(ref, outcome)
        fields = {**fields, OField.OUTCOME: fields.get(OField.OUTCOME) or outcome}
        metrics.CALLS.labels(outcome).inc()
        if fields.get(OField.AMD) == "1" and status == TwilioStatus.COMPLETED:
            action, waited_ms = await self.store.stream_amd(call_sid)
            metrics.AMD_ACTIONS.labels(action or "none").inc()
            if waited_ms is not None:
                metrics.GREETING_WAIT.observe(waited_ms / 1000)
        self.webhooks.send(fields.get(OField.WEBHOOK), _payload(fields, status))
        log.info("outbound call ended: %s", outcome, extra={"call_sid": call_sid, "ref": ref, "outcome": outcome})
        if self.on_ended is not None and fields.get(OField.CAMPAIGN):
            await self.on_ended(fields, outcome)

    async def amd(self, ref: str, form: dict[str, str]) -> None:
        call_sid = form.get("CallSid", "")
        record = await self.record_for("amd", ref, call_sid)
        if record is None:
            return
        answered_by = form.get("AnsweredBy", "")
        if answered_by not in ANSWERED_BY:
            answered_by = "unknown"  # a verdict this version does not know: treated as undecided
        raw_ms = form.get("MachineDetectionDuration", "")
        detection_ms = int(raw_ms) if raw_ms.isdigit() and len(raw_ms) < 8 else None
        if not await self.store.set_amd(ref, answered_by, detection_ms):
            metrics.CALLBACKS.labels("amd", "stale").inc()
            return
        metrics.CALLBACKS.labels("amd", "ok").inc()
        metrics.AMD_VERDICTS.labels(answered_by).inc()
        if detection_ms is not None:
            metrics.AMD_DETECTION.observe(detection_ms / 1000)
        log.info("AMD verdict %s after %s ms", answered_by, detection_ms, extra={"call_sid": call_sid, "ref": ref})
        await self._tell_worker(call_sid, answered_by, detection_ms)
        self.webhooks.send(record.get(OField.WEBHOOK),
                           {**_payload(record, record.get(OField.STATUS, "")), "event": "call.amd",
                            "answered_by": answered_by, "amd_ms": detection_ms})

    async def _tell_worker(self, call_sid: str, answered_by: str, detection_ms: int | None) -> None:
        # Recorded first (set_amd), looked up second: a stream that starts after this lookup finds the
        # verdict on the record when its worker claims it; one that exists now gets the command.
        stream_sid = await self.store.stream_of(call_sid)
        if stream_sid is None:
            return
        command = messages.AmdVerdict(answered_by=answered_by,  # type: ignore[arg-type]
                                      detection_ms=detection_ms, received_at=round(time.time(), 3))
        envelope = messages.Envelope(id=uuid.uuid4().hex, command=command)  # no expiry: applied whenever read
        await self.state.redis.xadd(self.state.keys.commands(stream_sid),
                                    entries.command(envelope.dumps()).fields(),  # type: ignore[arg-type]
                                    maxlen=keyspace.COMMANDS_STREAM_MAXLEN, approximate=True)


def _payload(fields: dict[str, str], status: str) -> dict[str, object]:
    payload: dict[str, object] = {
        "event": "call.status", "call_sid": fields.get(OField.CALL_SID, ""), "status": status,
        "to": fields.get(OField.TO, ""), "from": fields.get(OField.FROM, ""), "ts": round(time.time(), 3),
    }
    for name in (OField.OUTCOME, OField.ANSWERED_BY, OField.CAMPAIGN, OField.ERROR):
        if fields.get(name):
            payload[str(name)] = fields[name]
    if fields.get(OField.INDEX, "").isdigit():
        payload["destination"] = int(fields[OField.INDEX])
    return payload
