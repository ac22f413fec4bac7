"""Transfers to a person, on the worker that holds the call: the agent's `transfer_call` and the
`transfer` command (`POST /v1/calls/{callSid}/transfer`) both come here.

1. The request is checked: Twilio REST credentials, the target on the profile's allow-list
   (a number or SIP URI the operator listed: the target may come from an LLM a caller can talk
   into anything), no other transfer under way, and for a warm transfer (and for a cold one to
   come back on no answer) CONTROL_PUBLIC_URL, where Twilio's callbacks go.
2. The call leaves the agent only once what the agent says has played: the conversation core's
   handoff waiter fires on the mark echoes (`Played`), never on a timer.
3. Then Twilio's Calls API moves it (`switchboard.transfers` has the TwiML): cold, the call is
   redirected to <Dial> the target; warm, the caller is redirected into a conference to hold
   and the target is dialled with the whisper. The stream stops; this session ends with outcome
   `transferred` (cold) or `transferring` (warm: the control API follows Twilio's callbacks).

A caller who comes back (nobody answered) arrives as a new stream of the same call, with the
grants the control API minted; `returned` marks that on the transfer, and the agent says so.
Every step is a `transfer` event, the call record's `transfer` field and a metric.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
from prometheus_client import Counter

from switchboard import deepgram, transfers
from switchboard import keys as keyspace
from switchboard.agent_settings import AgentSettings
from switchboard.besteffort import best_effort
from switchboard.conversation import Played
from switchboard.entries import event as event_entry
from switchboard.messages import CallField, Event, Outcome
from switchboard.transfers import State, Transfer, TransferKeys
from switchboard.twilio_rest import CallsApi, Credentials, TwilioApiError

from . import metrics, records
from .port import WorkerPort

log = logging.getLogger(__name__)

TRANSFERS = Counter("switchboard_worker_transfers_total",
                    "Transfer steps on workers, by mode and step (requested|refused|dialing|holding|failed|returned)",
                    ["mode", "step"])
SETTLE_S = 10.0  # at the call's end, how long a transfer's Twilio requests may still take


class TransferHandle(Protocol):
    """What a transfer needs of its call session."""

    call_sid: str
    stream_sid: str
    call_key: str
    events_key: str
    extra: dict[str, str]
    settings: AgentSettings
    port: WorkerPort

    def event(self, kind: str, /, **data: Any) -> None: ...

    def send_to_agent(self, message: str) -> bool: ...

    def when_played(self, token: str, *, expect_reply: bool, reply_wait_s: float) -> None: ...


class Transfers:
    def __init__(self, session: TransferHandle) -> None:
        self._session = session
        self._current: Transfer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._say_when_connected: str | None = None
        self.outcome: str | None = None  # the session's outcome once the call has left the agent

    # --- asking ------------------------------------------------------------------------------
    def request(self, to: str | None, mode: str | None, *, by: str, announce: str | None = None,
                summary: str | None = None, expect_reply: bool = False) -> tuple[bool, str]:
        """Start a transfer; (accepted, what to tell whoever asked). It goes on asynchronously."""
        session = self._session
        config = session.settings.transfer
        allowed = self.allowed_targets()
        mode = mode if mode in ("cold", "warm") else config.mode
        if to is None and len(allowed) == 1:
            to = allowed[0]
        problem = self._problem(to, mode, allowed)
        if problem is not None:
            TRANSFERS.labels(mode, "refused").inc()
            log.warning("transfer refused: %s", problem, extra={**session.extra, "target": str(to)[:40]})
            return False, problem
        assert to is not None
        transfer = Transfer(
            id=secrets.token_hex(6), call_sid=session.call_sid, stream_sid=session.stream_sid, mode=mode, target=to,
            by=by, summary=summary or "", hold_message=config.hold_message,
            hold_music_url=str(config.hold_music_url) if config.hold_music_url else "",
            no_answer_message=config.no_answer_message, ring_timeout_s=config.ring_timeout_s,
            caller_id=config.caller_id or "", created_at=round(time.time(), 3),
        )
        self._current = transfer
        self._step(transfer, State.WAITING, announce=announce)
        if announce:
            session.send_to_agent(deepgram.inject_agent_message(announce, "queue"))
        session.when_played(transfer.id, expect_reply=expect_reply or bool(announce), reply_wait_s=config.reply_wait_s)
        return True, f"transferring ({mode}) to {to} once the agent's current sentence has played"

    def allowed_targets(self) -> list[str]:
        settings = self._session.settings
        function = settings.function("transfer_call")
        listed = (function.destinations or []) if function else []
        return list(dict.fromkeys([*settings.transfer.destinations, *listed]))

    def _problem(self, to: str | None, mode: str, allowed: list[str]) -> str | None:
        config = self._session.port.settings
        if not config.twilio_account_sid or config.twilio_auth_token is None:
            return ("transfers are not available: the worker has no Twilio REST credentials "
                    "(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)")
        if not allowed:
            return "no transfer destinations are configured (transfer.destinations)"
        if to not in allowed:
            return f"transfer to {str(to)[:40]!r} is not allowed; allowed: {', '.join(allowed)}"
        if mode == "warm" and not config.control_public_url:
            return "warm transfers need CONTROL_PUBLIC_URL on the worker (where Twilio's callbacks go)"
        if self._current is not None and self._current.state not in (State.FAILED, State.RETURNED):
            return f"a transfer is already under way ({self._current.state})"
        return None

    # --- the agent has finished its sentence ----------------------------------------------------------
    def played(self, action: Played) -> None:
        transfer = self._current
        if transfer is None or transfer.id != action.token or transfer.state != State.WAITING:
            return
        task = asyncio.create_task(self._move(transfer, forced=action.forced))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """The call is ending: let a move under way finish (bounded); a transfer still waiting for
        the agent's sentence never happens (the caller hung up)."""
        if self._tasks:
            try:
                async with asyncio.timeout(SETTLE_S):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            except TimeoutError:
                log.warning("a transfer's Twilio requests outlived the call", extra=self._session.extra)
        transfer = self._current
        if transfer is not None and transfer.state == State.WAITING:
            transfer.reason = "the caller hung up first"
            self._step(transfer, State.ABANDONED)

    async def _move(self, transfer: Transfer, *, forced: bool) -> None:
        session = self._session
        settings = session.port.settings
        assert settings.twilio_account_sid and settings.twilio_auth_token is not None
        api = CallsApi(session.port.http, settings.twilio_api_base_url,
                       Credentials(settings.twilio_account_sid, settings.twilio_account_sid,
                                   settings.twilio_auth_token.get_secret_value()))
        params, transfer.profile = await self._call_record()
        try:
            if transfer.mode == "cold":
                await self._cold(api, transfer)
            else:
                await self._warm(api, transfer, params)
        except TwilioApiError as exc:
            await self._failed(api, transfer, exc)
        except Exception:  # task boundary: the caller must not be left without an agent or a person
            log.exception("transfer failed", extra={**session.extra, "transfer": transfer.id})
            transfer.reason = "internal error"
            self._step(transfer, State.FAILED)
            self._say(transfer.no_answer_message)
        if forced:
            log.warning("transfer went ahead without the end of the agent's sentence", extra=session.extra)

    async def _cold(self, api: CallsApi, transfer: Transfer) -> None:
        base, query = self._control_url(), self._query(transfer)
        if base:
            twiml = transfers.cold_twiml(transfer.target, timeout_s=transfer.ring_timeout_s,
                                         action_url=f"{base}/twiml/transfer/dialed?{query}",
                                         status_url=f"{base}/twilio/transfer/status?{query}")
        else:
            twiml = _plain_dial(transfer.target)
        # Stored before Twilio is asked: its callbacks may come before this request's answer.
        await self._store(transfer, State.DIALING, check_at=time.time() + transfer.ring_timeout_s
                          + transfers.SWEEP_GRACE_S if base else None)
        await api.update(transfer.call_sid, [("Twiml", twiml)])
        # With callbacks the control API says when the person has the call; a plain <Dial> is the end.
        self.outcome = Outcome.TRANSFERRING if base else Outcome.TRANSFERRED
        self._step(transfer, State.DIALING)

    async def _warm(self, api: CallsApi, transfer: Transfer, params: dict[str, str]) -> None:
        session = self._session
        base, query = self._control_url(), self._query(transfer)
        if not transfer.summary:
            transfer.summary = transfers.whisper(await records.events(session.port, session.events_key), params)
        transfer.caller_id = transfer.caller_id or params.get("To", "")
        await self._store(transfer, State.HOLDING)  # before Twilio fetches the hold music
        hold = transfers.hold_twiml(transfer, wait_url=f"{base}/twiml/transfer/hold?{query}",
                                    conference_url=f"{base}/twilio/transfer/conference?{query}",
                                    return_url=f"{base}/twiml/transfer/return?{query}")
        await api.update(transfer.call_sid, [("Twiml", hold)])
        self.outcome = Outcome.TRANSFERRING
        self._step(transfer, State.HOLDING)
        try:
            created = await api.create([
                ("To", transfer.target), ("From", transfer.caller_id), ("Twiml", transfers.target_twiml(transfer)),
                ("Timeout", str(transfer.ring_timeout_s)),
                ("StatusCallback", f"{base}/twilio/transfer/status?{query}"), ("StatusCallbackMethod", "POST"),
                ("StatusCallbackEvent", "answered"), ("StatusCallbackEvent", "completed"),
            ])
        except TwilioApiError as exc:
            # The caller already holds: the control API's return URL brings them back to the agent.
            transfer.reason = f"the target could not be dialled: {exc.message}"[:200]
            await self._store(transfer, State.NO_ANSWER, check_at=time.time() + transfers.RETURN_GRACE_S)
            self._step(transfer, State.NO_ANSWER)
            await api.update(transfer.call_sid, [("Url", f"{base}/twiml/transfer/return?{query}"), ("Method", "POST")])
            return
        transfer.target_call_sid = str(created.get("sid") or "")
        # Only the target's sid and the sweeper's deadline: Twilio's callbacks may have moved the
        # state on already (answered), and that must not be written back.
        port, tkeys = self._session.port, TransferKeys(self._session.port.keys.prefix)
        pipe = port.redis.pipeline(transaction=False)
        pipe.hset(tkeys.record(transfer.call_sid), "target_call_sid", transfer.target_call_sid)
        pipe.zadd(tkeys.pending(), {transfer.call_sid: time.time() + transfer.ring_timeout_s + transfers.SWEEP_GRACE_S})
        await pipe.execute()
        self._step(transfer, State.HOLDING, label="ringing")

    async def _failed(self, api: CallsApi, transfer: Transfer, exc: TwilioApiError) -> None:
        session = self._session
        log.warning("transfer failed at Twilio: %s", exc, extra={**session.extra, "transfer": transfer.id})
        if transfer.state == State.WAITING:
            # Twilio refused to move the call: it is still with the agent, which says so.
            transfer.reason = f"Twilio refused the transfer ({exc.kind})"
            self.outcome = None
            await self._store(transfer, State.FAILED)
            self._step(transfer, State.FAILED)
            self._say(transfer.no_answer_message)

    # --- a caller who came back -------------------------------------------------------------------
    async def returned(self, old_stream_sid: str) -> None:
        """This session's stream continues `old_stream_sid` (already adopted): if the call left the
        agent for a transfer nobody answered, mark it returned and have the agent say so."""
        session = self._session
        port = session.port
        tkeys = TransferKeys(port.keys.prefix)
        raw = await port.redis.hgetall(tkeys.record(session.call_sid))
        transfer = Transfer.from_fields(raw) if raw else None
        if transfer is None or transfer.stream_sid != old_stream_sid or transfer.state not in (
                State.NO_ANSWER, State.RETURNING):
            return
        transfer.returned_stream = session.stream_sid
        self._current = transfer
        await self._store(transfer, State.RETURNED)
        self._step(transfer, State.RETURNED)
        self._say_when_connected = transfer.no_answer_message
        # The old stream's followers (SSE) move over here, as after an edge loss; its call is not
        # one that ended (the ended-calls index keeps the stream that ends last).
        moved = orjson.dumps({"type": Event.CALL_ENDED, "outcome": Outcome.COMPLETED, "reason": "moved_to_new_stream",
                              "ts": round(time.time(), 3)})
        async with best_effort("record the move to the new stream", errors=metrics.REDIS_ERRORS, extra=session.extra):
            pipe = port.redis.pipeline(transaction=False)
            pipe.xadd(port.keys.events(old_stream_sid), event_entry(moved).fields(),  # type: ignore[arg-type]
                      maxlen=keyspace.EVENTS_STREAM_MAXLEN, approximate=True)
            pipe.zrem(f"{port.keys.prefix}calls:ended", old_stream_sid)
            await pipe.execute()

    def on_agent_connected(self) -> None:
        """The Deepgram session is up: after a transfer nobody answered, the agent says so."""
        message, self._say_when_connected = self._say_when_connected, None
        if message:
            self._say(message)

    # --- helpers -----------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if text and not self._session.send_to_agent(deepgram.inject_agent_message(text, "queue")):
            self._say_when_connected = text

    def _step(self, transfer: Transfer, state: State, **extra: Any) -> None:
        event = transfer.step(state, **extra)
        TRANSFERS.labels(transfer.mode, event["step"]).inc()
        self._session.event(Event.TRANSFER, **event)
        self._session.port.bookkeeping.write(self._session.call_key, {CallField.TRANSFER: orjson.dumps(event)})
        log.info("transfer %s", state, extra={**self._session.extra, "transfer": transfer.id, "mode": transfer.mode})

    async def _store(self, transfer: Transfer, state: State, *, check_at: float | None = None) -> None:
        """The whole record, in `state` (`transfer.state` changes with the step's event, once done);
        `check_at`: when the control API's sweeper looks at it, should Twilio say nothing."""
        port = self._session.port
        tkeys = TransferKeys(port.keys.prefix)
        pipe = port.redis.pipeline(transaction=False)
        mapping: dict[Any, Any] = {**transfer.to_fields(), "state": str(state)}
        pipe.hset(tkeys.record(transfer.call_sid), mapping=mapping)
        pipe.expire(tkeys.record(transfer.call_sid), transfers.RECORD_TTL_S)
        if check_at is not None:
            pipe.zadd(tkeys.pending(), {transfer.call_sid: check_at})
        elif state not in transfers.OPEN:
            pipe.zrem(tkeys.pending(), transfer.call_sid)
        await pipe.execute()

    async def _call_record(self) -> tuple[dict[str, str], str]:
        """The stream's parameters (From, To, CallerName…) and profile, from the call record."""
        raw, profile = await self._session.port.redis.hmget(self._session.call_key,
                                                            [CallField.PARAMS, CallField.PROFILE])
        try:
            params = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            params = {}
        if not isinstance(params, dict):
            params = {}
        name = profile.decode(errors="replace") if isinstance(profile, bytes) else str(profile or "")
        return {str(k): str(v) for k, v in params.items()}, name

    def _control_url(self) -> str:
        return (self._session.port.settings.control_public_url or "").rstrip("/")

    def _query(self, transfer: Transfer) -> str:
        return urlencode({"call": transfer.call_sid, "t": transfer.id})


def _plain_dial(target: str) -> str:
    """Without CONTROL_PUBLIC_URL nothing can hear back from Twilio: the plain <Dial> of old."""
    if target.startswith(("sip:", "sips:")):
        return transfers.cold_twiml(target, timeout_s=30, action_url=None, status_url=None)
    return f"<Response><Dial>{target}</Dial></Response>"
