"""An outbound call as the API shows it (in a call's summary and detail), from its record.

Kept apart from the other outbound models: the control API's own `models` module imports it.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from switchboard.outbound import OField


class OutboundView(BaseModel):
    """What an outbound call adds to a call's summary and detail."""

    model_config = ConfigDict(populate_by_name=True)
    to: str
    from_: str = Field(..., alias="from")
    status: str = Field(..., description="Twilio's: queued, initiated, ringing, in-progress, completed, busy, "
                        "no-answer, failed, canceled")
    outcome: str | None = Field(None, description="completed, voicemail, amd_<verdict>, busy, no-answer, failed, "
                                "canceled, error")
    error: str | None = None
    machine_detection: bool = False
    answered_by: str | None = Field(None, description="Twilio's AMD verdict")
    amd_ms: int | None = Field(None, description="Twilio's MachineDetectionDuration")
    amd_action: str | None = Field(None, description="What the call did about it: greet, leave_message, hang_up")
    amd_waited_ms: int | None = Field(None, description="How long the greeting waited for the verdict")
    context: dict[str, Any] = Field(default_factory=dict)
    campaign: str | None = None
    destination: int | None = None
    created_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    duration_s: int | None = None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def view(fields: dict[str, str], *, amd_action: str | None = None, amd_waited_ms: int | None = None) -> OutboundView:
    try:
        context = orjson.loads(fields.get(OField.CONTEXT) or "{}")
    except orjson.JSONDecodeError:
        context = {}
    return OutboundView(
        to=fields.get(OField.TO, ""), from_=fields.get(OField.FROM, ""), status=fields.get(OField.STATUS, "queued"),
        outcome=fields.get(OField.OUTCOME) or None, error=fields.get(OField.ERROR) or None,
        machine_detection=fields.get(OField.AMD) == "1", answered_by=fields.get(OField.ANSWERED_BY) or None,
        amd_ms=_int(fields.get(OField.AMD_MS)), amd_action=amd_action, amd_waited_ms=amd_waited_ms,
        context=context if isinstance(context, dict) else {}, campaign=fields.get(OField.CAMPAIGN) or None,
        destination=_int(fields.get(OField.INDEX)), created_at=_float(fields.get(OField.CREATED_AT)),
        answered_at=_float(fields.get(OField.ANSWERED_AT)), ended_at=_float(fields.get(OField.ENDED_AT)),
        duration_s=_int(fields.get(OField.DURATION_S)),
    )
