"""Transfers to a person once the call has left the agent: Twilio's callbacks, the return to the
agent, and the sweeper for a target that never answers (see `switchboard.transfers`).

The worker that held the call moved it (cold: to <Dial>; warm: the caller into a conference, the
target dialled) and stored the transfer's record. From then on Twilio tells the control API how
it goes, at whichever replica: each callback moves the record's state with a compare-and-set (two
replicas may hear about one transfer at once), appends the step to the agent stream's events
(so SSE, the call detail and call.ended show it) and counts it. A caller nobody answered is sent
back to the agent: redirected to `/twiml/transfer/return`, which mints the one-time stream
token and resume grant (`stream_grants.issue`) exactly like a reconnect after an edge
loss; the edge's identity checks apply unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlencode

import orjson
import redis.asyncio as redis
from prometheus_client import Counter

from switchboard import entries, transfers
from switchboard import keys as keyspace
from switchboard.besteffort import best_effort
from switchboard.keys import Keys
from switchboard.messages import CallField, Event, Outcome
from switchboard.transfers import State, Transfer, TransferKeys
from switchboard.twilio_rest import CallsApi, TwilioApiError

log = logging.getLogger(__name__)

STEPS = Counter("switchboard_control_transfer_steps_total",
                "Transfer steps decided by the control API from Twilio's callbacks, by mode and step", ["mode", "step"])
CALLBACKS = Counter("switchboard_control_transfer_callbacks_total",
                    "Twilio callbacks about transfers, by kind and result (applied|stale|unknown)", ["kind", "result"])
REDIS_ERRORS = Counter("switchboard_control_transfer_redis_errors_total",
                       "Transfer steps whose event or record could not be written (the state moved anyway)")
SWEEP_BATCH = 50

# Move the record to ARGV[1] only from one of the states ARGV[3..] (a replica that heard of the
# transfer first wins); ARGV[2] is the JSON of other fields to set along.
_ADVANCE = """
local state = redis.call('hget', KEYS[1], 'state')
if not state then return 0 end
for i = 3, #ARGV do
  if state == ARGV[i] then
    redis.call('hset', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
    return 1
  end
end
return 0
"""


class TransferDesk:
    def __init__(self, client: redis.Redis, keys: Keys, calls: CallsApi | None, public_url: str | None) -> None:
        self._redis = client
        self._keys = keys
        self._tkeys = TransferKeys(keys.prefix)
        self._calls = calls
        self._public_url = (public_url or "").rstrip("/")

    async def load(self, call_sid: str, transfer_id: str) -> Transfer | None:
        raw = await self._redis.hgetall(self._tkeys.record(call_sid))
        transfer = Transfer.from_fields(raw) if raw else None
        if transfer is None or transfer.id != transfer_id:
            return None  # another transfer's (or a forged) callback: nothing to do
        return transfer

    # --- Twilio's callbacks ------------------------------------------------------------------------
    async def target_status(self, transfer: Transfer, form: dict[str, str]) -> None:
        status = form.get("CallStatus", "")
        if not transfer.target_call_sid and form.get("CallSid"):
            transfer.target_call_sid = form["CallSid"]
            await self._redis.hset(self._tkeys.record(transfer.call_sid), "target_call_sid", transfer.target_call_sid)
        new, send_back = transfers.on_target_status(transfer, status)
        if new is None:
            CALLBACKS.labels("status", "stale").inc()
            return
        if new == State.NO_ANSWER:
            transfer.reason = {"busy": "busy", "no-answer": "no answer", "failed": "the call failed",
                               "canceled": "canceled"}.get(status, "hung up before joining")
        if not await self._advance(transfer, new, frm=(transfer.state,), twilio_status=status):
            CALLBACKS.labels("status", "stale").inc()
            return
        CALLBACKS.labels("status", "applied").inc()
        if send_back:
            await self._send_back(transfer)

    async def conference_event(self, transfer: Transfer, form: dict[str, str]) -> None:
        new, cancel_target = transfers.on_conference_event(transfer, form.get("StatusCallbackEvent", ""),
                                                           form.get("CallSid", ""))
        if new is None:
            CALLBACKS.labels("conference", "stale").inc()
            return
        if new == State.ABANDONED:
            transfer.reason = "the caller hung up on hold"
        if not await self._advance(transfer, new, frm=(State.HOLDING, State.ANSWERED)):
            CALLBACKS.labels("conference", "stale").inc()
            return
        CALLBACKS.labels("conference", "applied").inc()
        if cancel_target:
            await self._cancel_target(transfer)

    async def dial_ended(self, transfer: Transfer, form: dict[str, str]) -> State:
        """The cold transfer's <Dial> is over: COMPLETED (hang up) or NO_ANSWER (back to the agent)."""
        dial_status = form.get("DialCallStatus", "")
        new = transfers.on_dial_action(transfer, dial_status, form.get("DialBridged") == "true")
        if new == State.NO_ANSWER:
            transfer.reason = {"busy": "busy", "no-answer": "no answer", "failed": "the call failed"}.get(
                dial_status, dial_status or "no answer")
        if transfer.state in (State.DIALING, State.CONNECTED):
            await self._advance(transfer, new, frm=(State.DIALING, State.CONNECTED), dial_status=dial_status)
        CALLBACKS.labels("dial", "applied").inc()
        return new

    async def returning(self, transfer: Transfer) -> bool:
        """The caller asks where to go after the transfer (the <Redirect> after the conference, or
        our redirect): True = back to the agent (a new stream), False = hang up (a person took it)."""
        if transfer.state in (State.CONNECTED, State.COMPLETED, State.ABANDONED, State.RETURNED):
            return False
        if transfer.state in (State.HOLDING, State.ANSWERED) and not transfer.reason:
            transfer.reason = "the conference ended before anyone joined"
        await self._advance(transfer, State.RETURNING,
                            frm=(State.NO_ANSWER, State.HOLDING, State.ANSWERED, State.DIALING, State.RETURNING))
        return True

    # --- the sweeper --------------------------------------------------------------------------------
    async def sweep(self, now: float) -> int:
        """Open transfers Twilio has said nothing about in time (a lost callback, control away):

        - a warm target that neither answered nor failed: no answer, the caller goes back;
        - a cold dial, or a caller sent back whose new stream never came: if Twilio says the
          caller's call is over, the transfer is abandoned; else it is looked at again later.
        """
        due = await self._redis.zrangebyscore(self._tkeys.pending(), "-inf", now, start=0, num=SWEEP_BATCH)
        swept = 0
        for raw_sid in due:
            call_sid = raw_sid.decode() if isinstance(raw_sid, bytes) else str(raw_sid)
            if not await self._redis.zrem(self._tkeys.pending(), call_sid):
                continue  # another replica took it
            raw = await self._redis.hgetall(self._tkeys.record(call_sid))
            transfer = Transfer.from_fields(raw) if raw else None
            if transfer is None or transfer.state not in transfers.OPEN:
                continue
            swept += 1
            if transfer.state in (State.HOLDING, State.ANSWERED):
                transfer.reason = "no answer within the ring timeout"
                if await self._advance(transfer, State.NO_ANSWER, frm=(State.HOLDING, State.ANSWERED), swept=True):
                    await self._cancel_target(transfer)
                    await self._send_back(transfer)
            elif await self._caller_gone(transfer):
                transfer.reason = "the caller hung up"
                await self._advance(transfer, State.ABANDONED, frm=(State.DIALING, State.NO_ANSWER, State.RETURNING),
                                    swept=True)
            else:
                await self._redis.zadd(self._tkeys.pending(), {call_sid: now + transfers.RETURN_GRACE_S})
        return swept

    async def _caller_gone(self, transfer: Transfer) -> bool:
        if self._calls is None:
            return False
        try:
            call = await self._calls.fetch(transfer.call_sid)
        except TwilioApiError as exc:
            return exc.kind == "not_found"
        return str(call.get("status")) in ("completed", "busy", "no-answer", "failed", "canceled")

    # --- helpers -------------------------------------------------------------------------------------
    def query(self, transfer: Transfer) -> str:
        return urlencode({"call": transfer.call_sid, "t": transfer.id})

    async def _cancel_target(self, transfer: Transfer) -> None:
        sid = transfer.target_call_sid
        if sid:
            await self._twilio("cancel the target's leg", lambda api: api.cancel(sid))

    async def _send_back(self, transfer: Transfer) -> None:
        """Redirect the holding caller to the return URL: a new stream to the agent (looked at again
        if it never comes); a caller Twilio no longer has hung up on hold."""
        url = f"{self._public_url}/twiml/transfer/return?{self.query(transfer)}"
        await self._redis.zadd(self._tkeys.pending(), {transfer.call_sid: time.time() + transfers.RETURN_GRACE_S})
        if not await self._twilio("send the caller back to the agent",
                                  lambda api: api.update(transfer.call_sid, [("Url", url), ("Method", "POST")])):
            transfer.reason = "the caller was gone before they could be sent back"
            await self._advance(transfer, State.ABANDONED, frm=(State.NO_ANSWER,))

    async def _twilio(self, what: str, request: Any) -> bool:
        if self._calls is None:
            log.error("cannot %s: the control API has no Twilio REST credentials", what)
            return False
        try:
            await request(self._calls)
        except TwilioApiError as exc:
            log.warning("could not %s: %s", what, exc)
            return exc.kind not in ("not_found", "refused")  # gone, or ended: Twilio cannot do it ever
        return True

    async def _advance(self, transfer: Transfer, new: State, *, frm: tuple[str, ...], **extra: Any) -> bool:
        """Move the record from one of `frm` to `new`; on success the step is recorded everywhere."""
        moved = await self._redis.eval(_ADVANCE, 1, self._tkeys.record(transfer.call_sid), str(new),
                                       str(round(time.time(), 3)), *[str(s) for s in frm])
        if not moved:
            return False
        previous = transfer.state
        now = round(time.time(), 3)
        fields: dict[Any, Any] = {"reason": transfer.reason} if transfer.reason else {}
        if new == State.CONNECTED:
            fields["connected_at"] = str(now)
        if new in (State.COMPLETED, State.ABANDONED):
            fields["ended_at"] = str(now)
        event = transfer.step(new, **extra)
        event.update(type=Event.TRANSFER, ts=now)
        pipe = self._redis.pipeline(transaction=False)
        if fields:
            pipe.hset(self._tkeys.record(transfer.call_sid), mapping=fields)
        if new not in transfers.OPEN:
            pipe.zrem(self._tkeys.pending(), transfer.call_sid)
        events_key = self._keys.events(transfer.stream_sid)
        pipe.xadd(events_key, entries.event(orjson.dumps(event)).fields(),  # type: ignore[arg-type]
                  maxlen=keyspace.EVENTS_STREAM_MAXLEN, approximate=True)
        record: dict[Any, Any] = {CallField.TRANSFER: orjson.dumps({k: v for k, v in event.items()
                                                                    if k not in ("type", "ts")}).decode()}
        if new in (State.CONNECTED, State.ABANDONED) or (new == State.COMPLETED and previous != State.CONNECTED):
            # The agent's part of the call is over for good: the stream's record and its followers say so.
            outcome = Outcome.TRANSFERRED if new == State.CONNECTED else "abandoned"
            record[CallField.OUTCOME] = outcome
            end = {"type": Event.CALL_ENDED, "outcome": outcome, "reason": f"transfer_{new}", "ts": now}
            pipe.xadd(events_key, entries.event(orjson.dumps(end)).fields(),  # type: ignore[arg-type]
                      maxlen=keyspace.EVENTS_STREAM_MAXLEN, approximate=True)
        pipe.hset(self._keys.call(transfer.stream_sid), mapping=record)
        async with best_effort("record a transfer step", errors=REDIS_ERRORS,
                               extra={"call_sid": transfer.call_sid, "transfer": transfer.id}):
            await pipe.execute()
        STEPS.labels(transfer.mode, str(new)).inc()
        log.info("transfer %s", new, extra={"call_sid": transfer.call_sid, "transfer": transfer.id,
                                            "reason": transfer.reason})
        return True
