"""Agent settings: the default, named profiles and per-call settings (before or during a call).

Every read masks secrets; every write restores masked secrets from the stored document,
bumps the version atomically and answers with the new document. `If-Match: <version>` makes
a write conditional (412 when someone else wrote first).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from switchboard import json_limits, messages, redis_types, settings_store
from switchboard.agent_settings import AgentSettings
from switchboard.settings_secrets import MaskedSecretError, masked, restore_secrets

from .. import callstate, commander, refusals
from ..deps import Auth, State, StateDep
from ..models import (
    CALL_SID,
    PROFILE_NAME,
    CallSettingsDocument,
    CommandResult,
    LiveChanges,
    Problem,
    ProfileList,
    ProfileSummary,
    SettingsDocument,
)

router = APIRouter(prefix="/v1", dependencies=[Auth], tags=["settings"])

CallSid = Annotated[str, Path(pattern=CALL_SID, examples=["CA0123456789abcdef0123456789abcdef"])]
ProfileName = Annotated[str, Path(pattern=PROFILE_NAME, examples=["sales"])]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", pattern=r'^"?[0-9]{1,15}"?$', description="Write only if the stored version is this one"),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 404: {"model": Problem}, 412: {"model": Problem}
}
PROFILE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 409: {"model": Problem, "description": "CONTROL_MAX_PROFILES profiles exist already"}
}
# A settings document nests about five levels above a function's schema (itself at most
# agent_settings.MAX_SCHEMA_DEPTH): a merge patch deeper than this cannot be valid, and is
# refused before the merge walks it.
MAX_PATCH_DEPTH = 64
SETTINGS_EXAMPLE = {
    "language": "en",
    "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
    "think": {
        "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
        "prompt": "You are the receptionist of Example Motors. Keep answers short.",
        "functions": [
            {
                "name": "get_slots",
                "description": "Free test-drive slots on a day",
                "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
                "webhook": {"url": "https://hooks.example.com/slots", "timeout_s": 5, "retries": 1},
            },
            {"name": "end_call", "description": "Hang up after saying goodbye"},
        ],
    },
    "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
    "greeting": "Hello! Example Motors, how can I help?",
}
SettingsBody = Annotated[AgentSettings, Body(openapi_examples={"receptionist": {"value": SETTINGS_EXAMPLE}})]
PatchBody = Annotated[
    dict[str, Any],
    Body(
        description="JSON merge patch (RFC 7386) of the settings: only the fields given change, null removes one",
        openapi_examples={"prompt": {"value": {"think": {"prompt": "Offer the spring discount."}}}},
    ),
]


def _expect(if_match: str | None) -> int | None:
    return int(if_match.strip('"')) if if_match else None


def _shown(settings: AgentSettings) -> AgentSettings:
    return AgentSettings.model_validate(masked(settings.model_dump(mode="json", exclude_none=True)))


def _document(settings: AgentSettings, version: int, source: str, response: Response) -> SettingsDocument:
    response.headers["ETag"] = f'"{version}"'
    return SettingsDocument(version=version, source=source, settings=_shown(settings))


def _validated(doc: dict[str, Any], stored: AgentSettings | None) -> AgentSettings:
    """The document a client sent, masked secrets restored, validated (→ 422 with a clear message)."""
    try:
        restored = restore_secrets(doc, stored.model_dump(mode="json", exclude_none=True) if stored else None)
        return AgentSettings.model_validate(restored)
    except MaskedSecretError as exc:
        raise RequestValidationError([{"loc": ("body",), "msg": str(exc), "type": "masked_secret"}]) from None
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None


async def _write(state: State, key: str, settings: AgentSettings, if_match: str | None, ttl_s: int = 0) -> int:
    try:
        return await settings_store.write(state.redis, key, settings, expect_version=_expect(if_match), ttl_s=ttl_s)
    except settings_store.VersionConflict as exc:
        raise HTTPException(status.HTTP_412_PRECONDITION_FAILED, f"stored version is {exc.current}") from None


# --- default --------------------------------------------------------------------------------------
@router.get("/settings/default", response_model=SettingsDocument, responses={401: {"model": Problem}})
async def get_default(state: StateDep, response: Response) -> SettingsDocument:
    """The settings of calls that have neither per-call settings nor a (known) profile."""
    stored = await settings_store.read(state.redis, state.keys.default_settings())
    if stored is None:
        return _document(AgentSettings(), 0, "builtin", response)
    return _document(stored[0], stored[1], "default", response)


@router.put("/settings/default", response_model=SettingsDocument, responses=ERRORS)
async def put_default(
    body: SettingsBody, state: StateDep, response: Response, if_match: IfMatch = None
) -> SettingsDocument:
    key = state.keys.default_settings()
    stored = await settings_store.read(state.redis, key)
    settings = _validated(body.model_dump(mode="json", exclude_none=True), stored[0] if stored else None)
    version = await _write(state, key, settings, if_match)
    return _document(settings, version, "default", response)


# --- profiles -------------------------------------------------------------------------------------
@router.get("/profiles", response_model=ProfileList, responses={401: {"model": Problem}})
async def list_profiles(state: StateDep) -> ProfileList:
    names = sorted(n.decode() for n in redis_types.members(await state.redis.smembers(state.keys.profiles())))
    pipe = state.redis.pipeline(transaction=False)
    for name in names:
        pipe.get(state.keys.profile(name))
    profiles = []
    for name, raw in zip(names, await pipe.execute()):
        if raw is not None:
            profiles.append(ProfileSummary(name=name, version=settings_store.decode(raw)[1]))
    return ProfileList(profiles=profiles)


@router.get("/profiles/{name}", response_model=SettingsDocument,
            responses={401: {"model": Problem}, 404: {"model": Problem}})
async def get_profile(name: ProfileName, state: StateDep, response: Response) -> SettingsDocument:
    stored = await settings_store.read(state.redis, state.keys.profile(name))
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"profile {name} not found")
    return _document(stored[0], stored[1], f"profile:{name}", response)


@router.put("/profiles/{name}", response_model=SettingsDocument, responses=PROFILE_ERRORS)
async def put_profile(
    name: ProfileName, body: SettingsBody, state: StateDep, response: Response, if_match: IfMatch = None
) -> SettingsDocument:
    """Create or replace a profile; calls select it with `<Parameter name="profile" value="…">`.
    At most CONTROL_MAX_PROFILES profiles exist: a new one beyond that is refused with 409."""
    key = state.keys.profile(name)
    stored = await settings_store.read(state.redis, key)
    settings = _validated(body.model_dump(mode="json", exclude_none=True), stored[0] if stored else None)
    most = state.settings.control_max_profiles
    reserved = await settings_store.reserve_name(state.redis, state.keys.profiles(), name, most)
    if reserved is settings_store.NameReservation.FULL:
        refusals.count("too_many_profiles", "profile limit reached", limit=most)
        raise HTTPException(status.HTTP_409_CONFLICT, f"there are {most} profiles already (CONTROL_MAX_PROFILES): "
                                                      "delete one, or replace an existing one")
    try:
        version = await _write(state, key, settings, if_match)
    except HTTPException:
        if reserved is settings_store.NameReservation.ADDED:
            await state.redis.srem(state.keys.profiles(), name)  # nothing was stored under it
        raise
    return _document(settings, version, f"profile:{name}", response)


@router.delete("/profiles/{name}", status_code=204, responses=ERRORS)
async def delete_profile(name: ProfileName, state: StateDep, if_match: IfMatch = None) -> Response:
    """Calls that name a deleted profile get the default settings."""
    try:
        deleted = await settings_store.delete(state.redis, state.keys.profile(name), expect_version=_expect(if_match))
    except settings_store.VersionConflict as exc:
        raise HTTPException(status.HTTP_412_PRECONDITION_FAILED, f"stored version is {exc.current}") from None
    await state.redis.srem(state.keys.profiles(), name)
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"profile {name} not found")
    return Response(status_code=204)


# --- per call -------------------------------------------------------------------------------------
async def _effective(state: State, call_sid: str, record: callstate.CallRecord | None) -> settings_store.Resolved:
    profile = record.fields.get("profile") or None if record else None
    return await settings_store.resolve(state.redis, state.keys, call_sid, profile)


@router.get("/calls/{call_sid}/settings", response_model=SettingsDocument, responses={401: {"model": Problem}})
async def get_call_settings(call_sid: CallSid, state: StateDep, response: Response) -> SettingsDocument:
    """The settings this call uses (or will use): per-call if set, else its profile's, else the default."""
    record = await callstate.find(state, call_sid)
    resolved = await _effective(state, call_sid, record)
    return _document(resolved.settings, resolved.version, resolved.source, response)


async def _store_call_settings(
    state: State, call_sid: str, new_doc: dict[str, Any], if_match: str | None, response: Response
) -> CallSettingsDocument:
    record = await callstate.find(state, call_sid)
    before = await _effective(state, call_sid, record)
    stored = before.settings if before.source == "call" else None
    settings = _validated(new_doc, stored or before.settings)
    version = await _write(state, state.keys.call_settings(call_sid), settings, if_match,
                           state.settings.call_settings_ttl_s)
    live = await _apply_live(state, record, before.settings, settings) if record is not None else None
    response.headers["ETag"] = f'"{version}"'
    return CallSettingsDocument(version=version, source="call", settings=_shown(settings), live=live)


async def _apply_live(
    state: State, record: callstate.CallRecord, before: AgentSettings, after: AgentSettings
) -> LiveChanges | None:
    # A waiting call has not resolved its settings yet: it will read the new document itself.
    if record.state not in ("connecting", "active"):
        return None
    changes = LiveChanges()
    if after.think.prompt != before.think.prompt:
        changes.applied["update_prompt"] = await _command(state, record,
                                                          messages.UpdatePrompt(prompt=after.think.prompt))
    if after.speak != before.speak:
        changes.applied["update_speak"] = await _command(state, record, messages.UpdateSpeak(speak=after.speak))
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    for block in ("language", "listen", "think", "greeting", "tags", "mip_opt_out"):
        if block == "think":  # the prompt went live above
            old[block].pop("prompt")
            new[block].pop("prompt")
        if old[block] != new[block]:
            changes.next_connect.append(block)
    return changes


async def _command(state: State, record: callstate.CallRecord, command: messages.Command) -> CommandResult:
    try:
        return await commander.send(state, record, command)
    except commander.CommandTimeout as exc:
        return CommandResult(
            applied=False, detail=commander.timeout_response_detail(state, exc.command_id),
            worker=record.fields.get("worker") or None, command_id=exc.command_id,
        )


@router.put("/calls/{call_sid}/settings", response_model=CallSettingsDocument, responses=ERRORS)
async def put_call_settings(
    call_sid: CallSid, body: SettingsBody, state: StateDep, response: Response, if_match: IfMatch = None
) -> CallSettingsDocument:
    """Settings for one callSid, before the call starts or while it runs (prompt and voice change live)."""
    doc = body.model_dump(mode="json", exclude_none=True)
    return await _store_call_settings(state, call_sid, doc, if_match, response)


@router.patch("/calls/{call_sid}/settings", response_model=CallSettingsDocument, responses=ERRORS)
async def patch_call_settings(
    call_sid: CallSid, patch: PatchBody, state: StateDep, response: Response, if_match: IfMatch = None
) -> CallSettingsDocument:
    """Change some fields of this call's settings (starting from its profile's or the default if none)."""
    if json_limits.depth(patch, stop_after=MAX_PATCH_DEPTH) > MAX_PATCH_DEPTH:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"nested more than {MAX_PATCH_DEPTH} levels deep", "type": "too_deep"}]
        )
    record = await callstate.find(state, call_sid)
    base = (await _effective(state, call_sid, record)).settings.model_dump(mode="json", exclude_none=True)
    return await _store_call_settings(state, call_sid, _merge_patch(base, patch), if_match, response)


@router.delete("/calls/{call_sid}/settings", status_code=204, responses=ERRORS)
async def delete_call_settings(call_sid: CallSid, state: StateDep, if_match: IfMatch = None) -> Response:
    """Forget the per-call settings (a running call keeps what it has)."""
    try:
        deleted = await settings_store.delete(
            state.redis, state.keys.call_settings(call_sid), expect_version=_expect(if_match)
        )
    except settings_store.VersionConflict as exc:
        raise HTTPException(status.HTTP_412_PRECONDITION_FAILED, f"stored version is {exc.current}") from None
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no settings for call {call_sid}")
    return Response(status_code=204)


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = _merge_patch(result.get(name), value)
    return result
