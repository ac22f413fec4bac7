"""Twilio's REST API, as far as calls and conferences go: `/2010-04-01/Accounts/{AccountSid}/…`.

Every request goes through one gate, in Twilio's order: the body limit, the account's
concurrency limit (429/20429), Basic auth (401/20003), injected faults, then the resource.
Whatever the outcome, the request is logged (method, path, parameters, which credential,
the answer, unknown parameters) and counted; a refusal is counted by its Twilio code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import auth, errors, forms, validate
from .calls import CallActor
from .core import Core
from .errors import TwilioError
from .forms import Form, Reader
from .resources import API_VERSION, call_json, conference_json, page, participant_json
from .validate import Parsed

log = logging.getLogger(__name__)
PREFIX = f"/{API_VERSION}/Accounts/{{account}}"
SECRET_PARAMS = frozenset({"SipAuthPassword"})  # never kept in the request log
HANG_UP_WAIT_S = 2.0  # Twilio answers a hang-up with the ended call: wait for it this long

Result = tuple[int, Any, Parsed | None, str | None]  # status, body, what was parsed, the resource's sid
Handler = Callable[[Request, Form], Awaitable[Result]]


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > forms.MAX_FORM_BYTES:
        raise errors.invalid_parameter("body", f"larger than {forms.MAX_FORM_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > forms.MAX_FORM_BYTES:
            raise errors.invalid_parameter("body", f"larger than {forms.MAX_FORM_BYTES} bytes")
    return body


def _query(request: Request) -> Form:
    form: Form = {}
    for name, value in request.query_params.multi_items():
        form.setdefault(name, []).append(value)
    return form


def _paging(r: Reader) -> tuple[int, int]:
    size = r.integer("PageSize", 50, 1, 1000)
    number = r.integer("Page", 0, 0, 1_000_000)
    r.one("PageToken")
    assert size is not None and number is not None
    return number, size


class Api:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.in_flight = 0

    def routes(self) -> list[Route]:
        every = ["GET", "POST", "PUT", "DELETE", "PATCH"]  # the gate answers Twilio's 405 itself

        def route(path: str, endpoint: str, handlers: dict[str, Handler]) -> Route:
            async def serve(request: Request) -> Response:
                handler = handlers.get(request.method)
                return await self._gate(request, endpoint, handler)

            return Route(PREFIX + path, serve, methods=every, name=endpoint)

        return [
            route("/Calls.json", "calls", {"GET": self.list_calls, "POST": self.create_call}),
            route("/Calls/{sid}.json", "call", {"GET": self.fetch_call, "POST": self.update_call}),
            route("/Conferences.json", "conferences", {"GET": self.list_conferences}),
            route("/Conferences/{sid}.json", "conference",
                  {"GET": self.fetch_conference, "POST": self.update_conference}),
            route("/Conferences/{sid}/Participants.json", "participants",
                  {"GET": self.list_participants, "POST": self.create_participant}),
            route("/Conferences/{sid}/Participants/{call}.json", "participant",
                  {"GET": self.fetch_participant, "POST": self.update_participant,
                   "DELETE": self.delete_participant}),
            route("/{rest:path}", "unknown", {}),
        ]

    async def _gate(self, request: Request, endpoint: str, handler: Handler | None) -> Response:
        core = self.core
        received_at = time.time()  # pacing is measured on arrival, not on when the answer was ready
        account_sid = request.path_params.get("account", "")
        result = auth.AuthResult(False, "none")
        form: Form = {}
        parsed: Parsed | None = None
        sid: str | None = None
        headers: dict[str, str] = {}
        self.in_flight += 1
        try:
            if self.in_flight > core.config.max_concurrent_requests:
                raise errors.too_many_requests()
            body = await _read_body(request)
            result = auth.check(request.headers.get("authorization"), core.account, account_sid)
            if not result.ok:
                raise errors.authenticate()
            fault = core.faults.take(request.url.path)
            if fault is not None:
                raise (errors.too_many_requests(fault.retry_after_s) if fault.status == 429
                       else errors.server_error(fault.status))
            if handler is None:
                if endpoint == "unknown":
                    raise errors.not_found(request.url.path)
                raise errors.method_not_allowed()
            form = forms.parse(body) if request.method == "POST" else _query(request)
            status, payload, parsed, sid = await handler(request, form)
            code = None
        except TwilioError as err:
            status, payload, headers, code = err.status, err.body(), err.headers, err.code
            core.metrics.refusals.labels(str(err.code)).inc()
        finally:
            self.in_flight -= 1
        core.requests.add(
            received_at=received_at, method=request.method, path=request.url.path,
            query=_query(request) if request.method != "GET" else {},
            form={k: ["***"] * len(v) if k in SECRET_PARAMS else v for k, v in form.items()},
            auth=result.to_json(), endpoint=endpoint, status=status, code=code, sid=sid,
            unknown=list(parsed.unknown) if parsed else [], notes=list(parsed.notes) if parsed else [],
        )
        core.metrics.requests.labels(endpoint, str(status)).inc()
        if status == 204:
            return Response(status_code=204, headers=headers)
        return JSONResponse(payload, status_code=status, headers=headers)

    # --- Calls ------------------------------------------------------------------------------------
    def _call(self, request: Request) -> CallActor:
        call = self.core.calls.get(request.path_params["sid"])
        if call is None:
            raise errors.not_found(request.url.path)
        return call

    async def create_call(self, request: Request, form: Form) -> Result:
        core = self.core
        parsed = validate.parse_create_call(form, core.caller_ids)
        req: validate.CreateCall = parsed.request  # type: ignore[assignment]
        reject_mode = core.config.over_cps == "reject"
        if reject_mode:
            admitted, retry_after = core.limiter.admit(asyncio.get_running_loop().time())
            if not admitted:
                raise errors.too_many_requests(retry_after)
        call = CallActor(core, to=req.to, from_=req.from_, direction="outbound-api",
                         callee=core.directory.pick(req.to), source=req.source, status_callback=req.status_callback,
                         ring_timeout_s=req.timeout_s, amd=req.amd, queued=not reject_mode).start()
        if parsed.unknown or parsed.notes:
            call.timeline.add("request-notes", unknown=list(parsed.unknown), notes=list(parsed.notes))
        return 201, call_json(call.rec), parsed, call.sid

    async def list_calls(self, request: Request, form: Form) -> Result:
        r = Reader(form)
        filters = {"to": r.one("To"), "from_": r.one("From"), "status": r.one("Status"),
                   "parent_call_sid": r.one("ParentCallSid")}
        number, size = _paging(r)
        calls = sorted(self.core.calls.values(), key=lambda c: c.rec.date_created, reverse=True)
        items = [call_json(c.rec) for c in calls
                 if all(v is None or str(getattr(c.rec, k)) == v for k, v in filters.items())]
        query = {k: v for k, v in request.query_params.items() if k not in ("Page", "PageSize", "PageToken")}
        return 200, page("calls", items, request.url.path, query, number, size), None, None

    async def fetch_call(self, request: Request, form: Form) -> Result:
        call = self._call(request)
        return 200, call_json(call.rec), None, call.sid

    async def update_call(self, request: Request, form: Form) -> Result:
        call = self._call(request)
        parsed = validate.parse_update_call(form)
        req: validate.UpdateCall = parsed.request  # type: ignore[assignment]
        call.timeline.add("rest-update", params={k: v[-1] for k, v in form.items()})
        if req.status_callback is not None:
            call.set_status_callback(req.status_callback, req.status_callback_method)
        if req.status is not None:
            if req.status == "canceled":
                call.cancel()
            else:
                call.hang_up("completed-over-rest")
            try:
                await asyncio.wait_for(call.wait_finished(), HANG_UP_WAIT_S)
            except TimeoutError:
                pass
        elif req.source is not None:
            if call.finished:
                raise errors.not_in_progress()
            call.redirect(replace(req.source))
        return 200, call_json(call.rec), parsed, call.sid

    # --- Conferences ------------------------------------------------------------------------------
    def _conference(self, request: Request) -> Any:
        conf = self.core.rooms.find(request.path_params["sid"])
        if conf is None:
            raise errors.not_found(request.url.path)
        return conf

    async def list_conferences(self, request: Request, form: Form) -> Result:
        r = Reader(form)
        name, status = r.one("FriendlyName"), r.one("Status")
        number, size = _paging(r)
        confs = sorted(self.core.rooms.conferences.values(), key=lambda c: c.date_created, reverse=True)
        items = [conference_json(c) for c in confs
                 if (name is None or c.friendly_name == name) and (status is None or str(c.status) == status)]
        query = {k: v for k, v in request.query_params.items() if k not in ("Page", "PageSize", "PageToken")}
        return 200, page("conferences", items, request.url.path, query, number, size), None, None

    async def fetch_conference(self, request: Request, form: Form) -> Result:
        conf = self._conference(request)
        return 200, conference_json(conf), None, conf.sid

    async def update_conference(self, request: Request, form: Form) -> Result:
        conf = self._conference(request)
        parsed = validate.parse_update_conference(form)
        req: validate.UpdateConference = parsed.request  # type: ignore[assignment]
        if req.announce_url:
            self.core.rooms.announce(conf, req.announce_url, req.announce_method)
        if req.status == "completed":
            self.core.rooms.end(conf)
        return 200, conference_json(conf), parsed, conf.sid

    # --- Participants -----------------------------------------------------------------------------
    def _participant(self, request: Request) -> tuple[Any, Any]:
        conf = self._conference(request)
        p = conf.find(request.path_params["call"])
        if p is None:
            raise errors.not_found(request.url.path)
        return conf, p

    async def list_participants(self, request: Request, form: Form) -> Result:
        conf = self._conference(request)
        r = Reader(form)
        muted, hold = r.one("Muted"), r.one("Hold")
        number, size = _paging(r)
        items = [participant_json(conf, p) for p in conf.participants.values()
                 if (muted is None or str(p.muted).lower() == muted) and (hold is None or str(p.hold).lower() == hold)]
        return 200, page("participants", items, request.url.path, {}, number, size), None, conf.sid

    async def create_participant(self, request: Request, form: Form) -> Result:
        core = self.core
        key = request.path_params["sid"]
        parsed = validate.parse_create_participant(form, core.caller_ids)
        req: validate.CreateParticipant = parsed.request  # type: ignore[assignment]
        if core.config.over_cps == "reject":
            admitted, retry_after = core.limiter.admit(asyncio.get_running_loop().time())
            if not admitted:
                raise errors.too_many_requests(retry_after)
        conf, p = core.rooms.add_participant(key, req)
        return 201, participant_json(conf, p), parsed, p.call_sid

    async def fetch_participant(self, request: Request, form: Form) -> Result:
        conf, p = self._participant(request)
        return 200, participant_json(conf, p), None, p.call_sid

    async def update_participant(self, request: Request, form: Form) -> Result:
        conf, p = self._participant(request)
        parsed = validate.parse_update_participant(form)
        self.core.rooms.update(conf, p, parsed.request)  # type: ignore[arg-type]
        return 200, participant_json(conf, p), parsed, p.call_sid

    async def delete_participant(self, request: Request, form: Form) -> Result:
        conf, p = self._participant(request)
        self.core.rooms.remove(conf, p)
        return 204, None, None, p.call_sid
