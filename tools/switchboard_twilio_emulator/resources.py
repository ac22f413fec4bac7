"""The JSON Twilio's REST API answers with: Call, Conference, Participant and list pages (pure).

Field names and formats follow Twilio's API definition (the `twilio` package's resource
classes): snake_case, dates in RFC 2822 ("Mon, 16 Aug 2010 03:45:01 +0000"), durations as
strings of seconds, `uri` relative to https://api.twilio.com.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from . import numbers
from .lifecycle import FINAL, CallStatus

API_VERSION = "2010-04-01"
CALL_SUBRESOURCES = ("events", "feedback", "feedback_summaries", "notifications", "payments", "recordings",
                     "siprec", "streams", "transcriptions", "user_defined_message_subscriptions",
                     "user_defined_messages")


def rfc2822(ts: float | None) -> str | None:
    return None if ts is None else format_datetime(datetime.fromtimestamp(ts, UTC))


def account_base(account_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}"


@dataclass(slots=True)
class CallRecord:
    """The Call resource's state (what GET Calls/{Sid}.json shows)."""

    sid: str
    account_sid: str
    to: str
    from_: str
    direction: str  # outbound-api | outbound-dial | inbound
    date_created: float
    parent_call_sid: str | None = None
    status: CallStatus = CallStatus.QUEUED
    date_updated: float = 0.0
    start_time: float | None = None
    answered_at: float | None = None
    end_time: float | None = None
    answered_by: str | None = None
    queue_time_ms: int = 0

    @property
    def duration_s(self) -> int | None:
        if self.status not in FINAL:
            return None
        if self.answered_at is None or self.end_time is None:
            return 0
        return max(0, round(self.end_time - self.answered_at))


def call_json(rec: CallRecord) -> dict[str, Any]:
    uri = f"{account_base(rec.account_sid)}/Calls/{rec.sid}"
    duration = rec.duration_s
    return {
        "account_sid": rec.account_sid,
        "annotation": None,
        "answered_by": rec.answered_by,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": rfc2822(rec.date_created),
        "date_updated": rfc2822(rec.date_updated or rec.date_created),
        "direction": rec.direction,
        "duration": None if duration is None else str(duration),
        "end_time": rfc2822(rec.end_time),
        "forwarded_from": None,
        "from": rec.from_,
        "from_formatted": numbers.formatted(rec.from_),
        "group_sid": None,
        "parent_call_sid": rec.parent_call_sid,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": str(rec.queue_time_ms),
        "sid": rec.sid,
        "start_time": rfc2822(rec.start_time),
        "status": str(rec.status),
        "subresource_uris": {name: f"{uri}/{''.join(p.title() for p in name.split('_'))}.json"
                             for name in CALL_SUBRESOURCES},
        "to": rec.to,
        "to_formatted": numbers.formatted(rec.to),
        "trunk_sid": None,
        "uri": f"{uri}.json",
    }


def conference_json(conf: Any) -> dict[str, Any]:
    uri = f"{account_base(conf.account_sid)}/Conferences/{conf.sid}"
    return {
        "account_sid": conf.account_sid,
        "api_version": API_VERSION,
        "call_sid_ending_conference": conf.call_sid_ending,
        "date_created": rfc2822(conf.date_created),
        "date_updated": rfc2822(conf.date_updated),
        "friendly_name": conf.friendly_name,
        "reason_conference_ended": conf.reason_ended,
        "region": "us1",
        "sid": conf.sid,
        "status": str(conf.status),
        "subresource_uris": {"participants": f"{uri}/Participants.json", "recordings": f"{uri}/Recordings.json"},
        "uri": f"{uri}.json",
    }


def participant_json(conf: Any, p: Any) -> dict[str, Any]:
    return {
        "account_sid": conf.account_sid,
        "call_sid": p.call_sid,
        "call_sid_to_coach": p.call_sid_to_coach,
        "coaching": p.coaching,
        "conference_sid": conf.sid,
        "date_created": rfc2822(p.date_created),
        "date_updated": rfc2822(p.date_updated),
        "end_conference_on_exit": p.end_on_exit,
        "hold": p.hold,
        "label": p.label,
        "muted": p.muted,
        "queue_time": str(p.queue_time_ms),
        "start_conference_on_enter": p.start_on_enter,
        "status": str(p.status),
        "uri": f"{account_base(conf.account_sid)}/Conferences/{conf.sid}/Participants/{p.call_sid}.json",
    }


def page(key: str, items: list[dict[str, Any]], path: str, query: dict[str, str], page_no: int,
         page_size: int) -> dict[str, Any]:
    """One page of a list, with Twilio's paging fields (the client follows next_page_uri)."""
    start = page_no * page_size
    chunk = items[start : start + page_size]

    def uri(n: int) -> str:
        return f"{path}?{urlencode({**query, 'PageSize': page_size, 'Page': n})}"

    more = start + page_size < len(items)
    return {
        key: chunk,
        "end": start + max(0, len(chunk) - 1),
        "first_page_uri": uri(0),
        "next_page_uri": uri(page_no + 1) if more else None,
        "page": page_no,
        "page_size": page_size,
        "previous_page_uri": uri(page_no - 1) if page_no > 0 else None,
        "start": start,
        "uri": uri(page_no),
    }
