"""Campaigns over REST: create, list, progress, per-destination results, pause, resume, cancel.

A campaign is checked whole before anything is stored: every destination must pass the
toll-fraud guard and have a time zone when calling hours are set, or the request is refused
naming the first ones that do not (nothing is dialled).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status

from switchboard import campaigns
from switchboard.campaigns import Destination

from ..deps import Auth, StateDep
from ..models import Problem
from .campaign_store import CampaignStore
from .dialer import DialError
from .models import (
    CampaignCounts,
    CampaignCreate,
    CampaignList,
    CampaignSpec,
    CampaignView,
    DestinationList,
    DestinationResult,
)
from .routes import REFUSALS, check_rate, refused
from .service import outbound_of

router = APIRouter(prefix="/v1/campaigns", dependencies=[Auth], tags=["campaigns"])
CampaignId = Annotated[str, Path(pattern=r"^CP[0-9a-f]{32}$", examples=["CP0123456789abcdef0123456789abcdef"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 404: {"model": Problem}}
MAX_LISTED_PROBLEMS = 10


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CampaignView, responses=REFUSALS)
async def create_campaign(body: CampaignCreate, request: Request, state: StateDep) -> CampaignView:
    """Start a campaign: each destination is called (with its own context) at most `concurrency` at
    once and `cps` per second, inside the calling hours, retried per outcome as `retry` says."""
    service = outbound_of(request)
    settings = state.settings
    if len(body.destinations) > settings.outbound_max_campaign_destinations:
        raise _unprocessable(f"{len(body.destinations)} destinations; at most "
                             f"{settings.outbound_max_campaign_destinations} (OUTBOUND_MAX_CAMPAIGN_DESTINATIONS)")
    if body.cps > settings.outbound_max_cps:
        raise _unprocessable(f"cps {body.cps:g} is over OUTBOUND_MAX_CPS ({settings.outbound_max_cps:g})")
    problems: list[DialError] = []
    hook = service.dialer.webhook_refusal(str(body.status_webhook) if body.status_webhook else None)
    if hook is not None:
        raise refused(hook)
    for index, dest in enumerate(body.destinations):
        error = service.dialer.refusal(dest.to, body.from_)
        if error is not None:
            error.message = f"destination {index}: {error.message}"
            problems.append(error)
        elif body.calling_hours is not None and campaigns.zone_for(
                dest.to, dest.timezone, body.calling_hours.timezone) is None:
            problems.append(DialError(422, "no_time_zone", f"destination {index} ({dest.to}): no time zone for "
                                      "the calling hours: give it a `timezone`, or calling_hours.timezone"))
        if len(problems) >= MAX_LISTED_PROBLEMS:
            break
    if problems:
        first = problems[0]
        first.message = "; ".join(p.message for p in problems)
        raise refused(first)
    await check_rate(state, request)
    cid = "CP" + uuid.uuid4().hex
    now = time.time()
    destinations = [Destination(d.to, d.context, d.timezone) for d in body.destinations]
    meta = {"spec": body.spec().model_dump_json(by_alias=True), "name": body.name, "created_at": repr(now)}
    await service.campaigns.create(cid, meta, destinations, [int(now * 1000)] * len(destinations), int(now * 1000))
    service.runner.wake()
    return await _view(service.campaigns, cid)


@router.get("", response_model=CampaignList, responses={401: {"model": Problem}})
async def list_campaigns(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                         offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> CampaignList:
    """Campaigns, newest first (kept until deleted from Redis)."""
    store = outbound_of(request).campaigns
    ids, total = await store.ids(offset, limit)
    views = [view for cid in ids if (view := await _maybe_view(store, cid)) is not None]
    return CampaignList(campaigns=views, total=total)


@router.get("/{campaign_id}", response_model=CampaignView, responses=NOT_FOUND)
async def get_campaign(campaign_id: CampaignId, request: Request) -> CampaignView:
    """Progress: counts per outcome, in flight, pending, attempts, the next attempt's time."""
    return await _view(outbound_of(request).campaigns, campaign_id)


@router.get("/{campaign_id}/destinations", response_model=DestinationList, responses=NOT_FOUND)
async def campaign_destinations(campaign_id: CampaignId, request: Request,
                                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                                offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> DestinationList:
    """Each destination's state, outcome and attempts (call SIDs, verdicts), in the order given."""
    store = outbound_of(request).campaigns
    meta = await store.meta(campaign_id)
    if meta is None:
        raise _not_found(campaign_id)
    rows = await store.page(campaign_id, offset, limit)
    return DestinationList(total=int(meta.get("total", 0)), destinations=[
        DestinationResult(index=i, to=d.to, status=d.status, outcome=d.outcome or None, next_at=d.next_at,
                          context=d.context, attempts=[a.to_json() for a in d.attempts]) for i, d in rows])


@router.post("/{campaign_id}/pause", response_model=CampaignView, responses={**NOT_FOUND, 409: {"model": Problem}})
async def pause_campaign(campaign_id: CampaignId, request: Request) -> CampaignView:
    """Dial nothing new (calls in progress go on) until resumed."""
    return await _move(request, campaign_id, "paused", ("running",))


@router.post("/{campaign_id}/resume", response_model=CampaignView, responses={**NOT_FOUND, 409: {"model": Problem}})
async def resume_campaign(campaign_id: CampaignId, request: Request) -> CampaignView:
    return await _move(request, campaign_id, "running", ("paused",))


@router.post("/{campaign_id}/cancel", response_model=CampaignView, responses={**NOT_FOUND, 409: {"model": Problem}})
async def cancel_campaign(campaign_id: CampaignId, request: Request) -> CampaignView:
    """Stop for good: pending destinations end `canceled`, ringing calls are canceled, answered ones go on."""
    service = outbound_of(request)
    if await service.campaigns.meta(campaign_id) is None:
        raise _not_found(campaign_id)
    if not await service.runner.cancel(campaign_id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"campaign {campaign_id} is not running or paused")
    return await _view(service.campaigns, campaign_id)


async def _move(request: Request, cid: str, state: str, allowed: tuple[str, ...]) -> CampaignView:
    service = outbound_of(request)
    if await service.campaigns.meta(cid) is None:
        raise _not_found(cid)
    if await service.campaigns.set_state(cid, state, allowed=allowed) is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"campaign {cid} is not {' or '.join(allowed)}")
    service.runner.wake()
    return await _view(service.campaigns, cid)


async def _view(store: CampaignStore, cid: str) -> CampaignView:
    view = await _maybe_view(store, cid)
    if view is None:
        raise _not_found(cid)
    return view


async def _maybe_view(store: CampaignStore, cid: str) -> CampaignView | None:
    meta = await store.meta(cid)
    if meta is None:
        return None
    pending, flight, outcomes, attempts, next_at = await store.progress(cid)
    spec = CampaignSpec.model_validate_json(meta.get("spec", "{}"))
    return CampaignView(
        id=cid, name=meta.get("name", ""), state=meta.get("state", "running"),  # type: ignore[arg-type]
        reason=meta.get("reason") or None, created_at=float(meta.get("created_at", 0)), total=int(meta.get("total", 0)),
        concurrency=spec.concurrency, cps=spec.cps, profile=spec.profile,
        counts=CampaignCounts(pending=pending, in_flight=flight, done=sum(outcomes.values()), attempts=attempts,
                              outcomes=outcomes),
        next_attempt_at=next_at,
    )


def _not_found(cid: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"campaign {cid} not found")


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, [{"loc": ["body"], "msg": message,
                                                                 "type": "value_error"}])
