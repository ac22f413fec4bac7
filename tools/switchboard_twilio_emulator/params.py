"""The parameters Twilio sends about a call (pure): its voice requests' standard set, and a status callback's."""

from __future__ import annotations

import math

from .lifecycle import SIP_CODES, CallStatus, Event, callback_status
from .resources import API_VERSION, CallRecord, rfc2822


def voice_params(rec: CallRecord) -> dict[str, str]:
    """Twilio's standard voice request parameters for this call."""
    params = {
        "AccountSid": rec.account_sid, "ApiVersion": API_VERSION, "CallSid": rec.sid,
        "CallStatus": str(rec.status), "Called": rec.to, "Caller": rec.from_, "Direction": rec.direction,
        "From": rec.from_, "To": rec.to,
    }
    if rec.parent_call_sid:
        params["ParentCallSid"] = rec.parent_call_sid
    return params


def status_callback_params(rec: CallRecord, event: Event, sequence: int, failed_sip_code: int) -> dict[str, str]:
    """The status callback for `event`, the `sequence`-th sent; `failed_sip_code` is reported if the call failed."""
    params = voice_params(rec)
    params.update(CallStatus=callback_status(event, rec.status), CallbackSource="call-progress-events",
                  SequenceNumber=str(sequence), Timestamp=rfc2822(rec.date_updated) or "")
    if event is Event.COMPLETED:
        duration = rec.duration_s or 0
        params.update(CallDuration=str(duration), Duration=str(math.ceil(duration / 60)),
                      SipResponseCode=str(failed_sip_code if rec.status is CallStatus.FAILED
                                          else SIP_CODES[rec.status]))
        if rec.answered_by:
            params["AnsweredBy"] = rec.answered_by
    return params
