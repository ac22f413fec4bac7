"""Transfers to a person: `POST /v1/calls/{callSid}/transfer` (bearer token), and the signed Twilio
callbacks a transfer's legs make once the call has left the agent (see ..transfers).

Each Twilio route checks `X-Twilio-Signature` like `/twiml` and names its transfer in the query
(`call`, `t`), which the signature covers; a callback for a transfer that is not the call's
current one changes nothing.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from switchboard import messages, settings_store, transfers
from switchboard.transfers import State, Transfer, TransferKeys

from .. import callstate, refusals, stream_grants, twiml_documents
from ..background import BackgroundDep
from ..deps import Auth, StateDep
from ..models import CALL_SID, CommandResult, Problem
from . import twiml
from .calls import COMMAND_RESPONSES, CallSid, Wait, send_command

log = logging.getLogger(__name__)
router = APIRouter(tags=["twilio"])
api = APIRouter(prefix="/v1/calls", dependencies=[Auth], tags=["calls"])

CallQuery = Annotated[str, Query(alias="call", pattern=CALL_SID, description="The transferred call's callSid")]
TransferQuery = Annotated[str, Query(alias="t", pattern=r"^[0-9a-f]{12}$", description="The transfer's id")]
_FORGED: dict[str, Any] = {"model": Problem, "description": "Missing or invalid X-Twilio-Signature"}
_TWIML: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/xml": {"schema": {"type": "string"}}}, "description": "TwiML"}, 403: _FORGED,
}
_CALLBACK: dict[int | str, dict[str, Any]] = {204: {"description": "Noted"}, 403: _FORGED}


def _form(raw: dict[str, list[str]]) -> dict[str, str]:
    return {name: values[0] for name, values in raw.items() if values}


def _xml(document: str) -> Response:
    return Response(document.encode(), media_type="application/xml")


async def _signed(request: Request, state: StateDep) -> dict[str, str]:
    return _form(await twiml._verified_form(request, state.settings))


@router.post("/twiml/transfer/hold", response_class=Response, responses=_TWIML, openapi_extra=twiml._FORM_BODY)
async def hold(request: Request, state: StateDep, background: BackgroundDep, call: CallQuery,
               t: TransferQuery) -> Response:
    """The conference's waitUrl: what a caller holding for a warm transfer hears."""
    await _signed(request, state)
    transfer = await background.desk.load(call, t)
    return _xml(transfers.wait_twiml(transfer) if transfer else "<Response/>")


@router.post("/twiml/transfer/return", response_class=Response, responses=_TWIML, openapi_extra=twiml._FORM_BODY)
async def back_to_agent(request: Request, state: StateDep, background: BackgroundDep, call: CallQuery,
                        t: TransferQuery) -> Response:
    """Where a caller goes after a warm transfer's conference: hang up if a person took the call,
    else a new stream to the agent (one-time token and resume grant, as after an edge loss)."""
    raw = await twiml._verified_form(request, state.settings)
    transfer = await background.desk.load(call, t)
    if transfer is None or not await background.desk.returning(transfer):
        return _xml(transfers.hangup_twiml())
    return await _stream_back(request, state, raw, transfer)


@router.post("/twiml/transfer/dialed", response_class=Response, responses=_TWIML, openapi_extra=twiml._FORM_BODY)
async def dialed(request: Request, state: StateDep, background: BackgroundDep, call: CallQuery,
                 t: TransferQuery) -> Response:
    """The cold transfer's <Dial> action: over (hang up), or nobody answered (back to the agent)."""
    raw = await twiml._verified_form(request, state.settings)
    transfer = await background.desk.load(call, t)
    if transfer is None or await background.desk.dial_ended(transfer, _form(raw)) != State.NO_ANSWER:
        return _xml(transfers.hangup_twiml())
    if not await background.desk.returning(transfer):
        return _xml(transfers.hangup_twiml())
    return await _stream_back(request, state, raw, transfer)


@router.post("/twilio/transfer/status", status_code=204, response_class=Response, responses=_CALLBACK,
             openapi_extra=twiml._FORM_BODY)
async def target_status(request: Request, state: StateDep, background: BackgroundDep, call: CallQuery,
                        t: TransferQuery) -> Response:
    """Status callbacks of the target's leg (answered, completed, busy, no-answer…)."""
    form = await _signed(request, state)
    transfer = await background.desk.load(call, t)
    if transfer is not None:
        await background.desk.target_status(transfer, form)
    return Response(status_code=204)


@router.post("/twilio/transfer/conference", status_code=204, response_class=Response, responses=_CALLBACK,
             openapi_extra=twiml._FORM_BODY)
async def conference(request: Request, state: StateDep, background: BackgroundDep, call: CallQuery,
                     t: TransferQuery) -> Response:
    """The warm transfer's conference events (who joined, who left)."""
    form = await _signed(request, state)
    transfer = await background.desk.load(call, t)
    if transfer is not None:
        await background.desk.conference_event(transfer, form)
    return Response(status_code=204)


async def _stream_back(request: Request, state: StateDep, raw: dict[str, list[str]], transfer: Transfer) -> Response:
    profile = transfer.profile or None
    parameters = twiml_documents.caller_parameters(raw, profile)
    await stream_grants.issue(state, raw, parameters, step=f"transfer:{transfer.id}", resume_of=transfer.stream_sid)
    log.info("caller back to the agent after a transfer", extra={"call_sid": transfer.call_sid,
                                                                 "transfer": transfer.id, "reason": transfer.reason})
    continue_url = twiml_documents.continue_url(state.settings, request, profile, 1)
    return Response(twiml_documents.render(state.settings, parameters, continue_url), media_type="application/xml")


# --- the REST API ---------------------------------------------------------------------------------------
class TransferView(BaseModel):
    id: str = Field(..., examples=["5f1c2e0b9a9f"])
    mode: str = Field(..., examples=["warm"])
    target: str = Field(..., examples=["+14155550100"])
    by: str = Field(..., description="agent (transfer_call) or api")
    state: str = Field(..., description="waiting | dialing | holding | answered | connected | completed | "
                       "no_answer | returning | returned | abandoned | failed", examples=["connected"])
    reason: str | None = Field(None, description="Why it did not connect")
    target_call_sid: str | None = None
    created_at: float | None = None
    connected_at: float | None = None
    ended_at: float | None = None


@api.post("/{call_sid}/transfer", response_model=CommandResult,
          responses={**COMMAND_RESPONSES,
                     403: {"model": Problem, "description": "The target is not on the allow-list"}})
async def transfer_call(call_sid: CallSid, body: messages.Transfer, state: StateDep, response: Response,
                        wait: Wait = True) -> CommandResult:
    """Hand the call to a person: cold (redirected to the target once the agent's current sentence has
    played) or warm (the caller holds while the target hears a summary, then they are joined; no
    answer brings the caller back to the agent). The target must be on the profile's
    `transfer.destinations` (or transfer_call's `destinations`)."""
    record = await callstate.require(state, call_sid, live=True)
    resolved = await settings_store.resolve(state.redis, state.keys, call_sid, record.fields.get("profile") or None)
    settings = resolved.settings
    function = settings.function("transfer_call")
    allowed = {*settings.transfer.destinations, *((function.destinations or []) if function else [])}
    if body.to not in allowed:
        refusals.count("transfer_target", "transfer to a target that is not allowed", call_sid=call_sid)
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"{body.to} is not on this call's transfer allow-list (transfer.destinations)")
    return await send_command(state, record, body, wait, response)


@api.get("/{call_sid}/transfer", response_model=TransferView,
         responses={401: {"model": Problem}, 404: {"model": Problem, "description": "No transfer for this call"}})
async def get_transfer(call_sid: CallSid, state: StateDep) -> TransferView:
    """The call's latest transfer and where it stands (kept for a day)."""
    raw = await state.redis.hgetall(TransferKeys(state.keys.prefix).record(call_sid))
    transfer = Transfer.from_fields(raw) if raw else None
    if transfer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no transfer for call {call_sid}")
    values: dict[str, Any] = {"id": transfer.id, "mode": transfer.mode, "target": transfer.target, "by": transfer.by,
                              "state": transfer.state, "reason": transfer.reason or None,
                              "target_call_sid": transfer.target_call_sid or None,
                              "created_at": transfer.created_at or None, "connected_at": transfer.connected_at or None,
                              "ended_at": transfer.ended_at or None}
    return TransferView(**values)
