"""Outbound calls in Redis: key names, the outbound call record, Twilio's call statuses (shared by
the control API, which writes the record, and the worker, which reads it when it claims the call).

Control creates the record before it asks Twilio to dial, keyed by its own reference (`ref`,
carried in the signed URLs Twilio calls back on), so that no callback can arrive for a call
control has no record of yet; `callsid:<CallSid>` points at it once the callSid is known. The
media side of an outbound call is an ordinary stream with its own call record
(`Keys.call(streamSid)`); this record adds what only an outbound call has: direction, to/from,
context, Twilio's status and its answering-machine verdict.

Key names live here rather than in `switchboard.keys` because they belong to this feature
alone; every outbound key carries its `{ref}` (or `{campaign id}`) hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

RECORD_TTL_S = 24 * 3600  # a live record's bound; an ended one keeps CALL_RETENTION_S
EVENTS_MAXLEN = 200
BY_CALLSID_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class OutboundKeys:
    prefix: str = "sb:"

    def call(self, ref: str) -> str:
        """Hash: the outbound call record (OField)."""
        return f"{self.prefix}outbound:{{{ref}}}"

    def events(self, ref: str) -> str:
        """Stream: Twilio's lifecycle of the call as control heard it (status, AMD verdict)."""
        return f"{self.prefix}outbound:{{{ref}}}:events"

    def by_callsid(self, call_sid: str) -> str:
        """String: callSid → ref."""
        return f"{self.prefix}outbound:callsid:{call_sid}"

    def pending(self) -> str:
        """Sorted set ref → created (ms): outbound calls not ended."""
        return f"{self.prefix}outbound:pending"

    def reconciler(self) -> str:
        """String: the control replica looking up overdue calls at Twilio this round (a short lease)."""
        return f"{self.prefix}outbound:reconciler"

    def rate(self, who: str, window: int) -> str:
        """Counter of outbound requests by one API token in one minute."""
        return f"{self.prefix}outbound:rate:{who}:{window}"

    # --- campaigns (one hash tag per campaign: its scripts touch a single cluster slot) ------------
    def campaign(self, cid: str) -> str:
        """Hash: spec (JSON), state, reason, created_at, updated_at, total."""
        return f"{self.prefix}campaign:{{{cid}}}"

    def campaign_destinations(self, cid: str) -> str:
        """Hash: index → destination state (JSON, switchboard.campaigns.Destination)."""
        return f"{self.prefix}campaign:{{{cid}}}:dest"

    def campaign_due(self, cid: str) -> str:
        """Sorted set: index → when it may be dialled (ms)."""
        return f"{self.prefix}campaign:{{{cid}}}:due"

    def campaign_flight(self, cid: str) -> str:
        """Sorted set: index → when its owner must have moved it on (ms): dialing or in a call."""
        return f"{self.prefix}campaign:{{{cid}}}:flight"

    def campaign_counts(self, cid: str) -> str:
        """Hash: final outcome → destinations; `attempts` → calls placed."""
        return f"{self.prefix}campaign:{{{cid}}}:counts"

    def campaign_pace(self, cid: str) -> str:
        """String: the earliest time (ms) of the campaign's next dial."""
        return f"{self.prefix}campaign:{{{cid}}}:pace"

    def campaign_sent(self, cid: str) -> str:
        """String: when (ms) the campaign's last create was sent."""
        return f"{self.prefix}campaign:{{{cid}}}:sent"

    def campaigns(self) -> str:
        """Sorted set: campaign id → created (ms)."""
        return f"{self.prefix}campaigns"

    def campaigns_active(self) -> str:
        """Set: campaigns that are running or paused (the dialers look at these)."""
        return f"{self.prefix}campaigns:active"


class OField(StrEnum):
    REF = "ref"
    CALL_SID = "call_sid"
    TO = "to"
    FROM = "from"
    PROFILE = "profile"
    CONTEXT = "context"  # JSON
    STATUS = "status"  # Twilio's: queued, initiated, ringing, in-progress, completed, busy, no-answer, failed, canceled
    STATUS_RANK = "status_rank"  # rank(status): a stale callback never moves the call backwards
    OUTCOME = "outcome"  # once ended: completed, voicemail, amd_*, busy, no-answer, failed, canceled, error
    ERROR = "error"  # why Twilio refused or failed the call
    AMD = "amd"  # "1" when answering-machine detection was asked for
    ANSWERED_BY = "answered_by"
    AMD_MS = "amd_ms"  # Twilio's MachineDetectionDuration
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    ANSWERED_AT = "answered_at"
    ENDED_AT = "ended_at"
    DURATION_S = "duration_s"
    SIP_CODE = "sip_code"
    WEBHOOK = "webhook"  # the user's status webhook URL
    CAMPAIGN = "campaign"
    INDEX = "index"  # the destination within the campaign
    RING_TIMEOUT_S = "ring_timeout_s"
    SETTINGS = "settings"  # per-call agent settings of the request (JSON), stored by callSid once it is known


class TwilioStatus(StrEnum):
    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL = frozenset({TwilioStatus.COMPLETED, TwilioStatus.BUSY, TwilioStatus.NO_ANSWER, TwilioStatus.FAILED,
                   TwilioStatus.CANCELED})
_RANK = {TwilioStatus.QUEUED: 0, TwilioStatus.INITIATED: 1, TwilioStatus.RINGING: 2, TwilioStatus.IN_PROGRESS: 3}


def rank(status: str) -> int:
    """Order of a call's statuses: a callback that would move a call backwards is stale."""
    return 4 if status in FINAL else _RANK.get(status, -1)  # type: ignore[call-overload]


def advances(current: str | None, new: str) -> bool:
    """Whether `new` moves a call on from `current` (callbacks may reach replicas out of order)."""
    return rank(new) > (rank(current) if current else -1)


def outcome(final_status: str, stream_outcome: str | None) -> str:
    """The outcome of an ended outbound call: Twilio's status, unless Switchboard ended an answered
    call for a reason of its own (a machine answered: `voicemail`, `amd_fax`…)."""
    if final_status == TwilioStatus.COMPLETED and stream_outcome and (
            stream_outcome == "voicemail" or stream_outcome.startswith("amd_")):
        return stream_outcome
    return final_status


@dataclass(frozen=True, slots=True)
class OutboundInfo:
    """What a worker needs of an outbound call it claims."""

    ref: str
    context: dict[str, Any]
    amd: bool
    answered_by: str | None
    amd_ms: int | None


async def load(redis: Any, keys: OutboundKeys, call_sid: str) -> OutboundInfo | None:
    """The outbound record of this call, or None (an inbound call)."""
    ref = await redis.get(keys.by_callsid(call_sid))
    if ref is None:
        return None
    raw = await redis.hmget(keys.call(ref.decode()), [OField.CONTEXT, OField.AMD, OField.ANSWERED_BY, OField.AMD_MS])
    context_raw, amd, answered_by, amd_ms = raw
    try:
        context = orjson.loads(context_raw) if context_raw else {}
    except orjson.JSONDecodeError:
        context = {}
    return OutboundInfo(
        ref.decode(), context if isinstance(context, dict) else {}, amd == b"1",
        answered_by.decode() if answered_by else None,
        int(amd_ms) if amd_ms and amd_ms.isdigit() else None,
    )
