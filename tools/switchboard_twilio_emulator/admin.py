"""The emulator's own API (`/_emulator/…`, no auth: bind it to loopback) and `/metrics`.

Introspection (requests received, callbacks sent, each call's timeline and what its party
heard, conferences, pacing statistics), control (callees, faults, inbound calls, reset),
and long-polling: `GET /_emulator/calls/{sid}?wait=ended` answers once the call has ended,
so a test in another process waits for an event instead of sleeping.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import callees, forms, numbers
from .calls import CallActor
from .core import Core
from .exchange import Fault, Faults, LostCallback
from .lifecycle import FINAL
from .validate import Source, StatusCallback

MAX_ADMIN_BODY = 256 * 1024
MAX_WAIT_S = 120.0
WAITS = ("answered", "ended", "report", "ringing", "in-progress", *(str(s) for s in FINAL))


class BadRequest(ValueError):
    pass


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail, "status": status}, status_code=status)


async def _json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_ADMIN_BODY:
        raise BadRequest(f"body larger than {MAX_ADMIN_BODY} bytes")
    try:
        return json.loads(body or b"{}")
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None


def _since(request: Request) -> int:
    value = request.query_params.get("since", "0")
    if not value.isdigit():
        raise BadRequest("since must be a whole number (an entry id)")
    return int(value)


def max_in_window(times: list[float], window_s: float) -> int:
    """The most events in any window of `window_s` seconds (times need not be sorted)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def mean_rate(times: list[float]) -> float | None:
    """Events per second from the first to the last (None for fewer than two)."""
    if len(times) < 2 or max(times) == min(times):
        return None
    return (len(times) - 1) / (max(times) - min(times))


def min_interval(times: list[float]) -> float | None:
    ordered = sorted(times)
    return min((b - a for a, b in itertools.pairwise(ordered)), default=None)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    live = best = 0
    for _, step in edges:
        live += step
        best = max(best, live)
    return best


class Admin:
    def __init__(self, core: Core) -> None:
        self.core = core

    def routes(self) -> list[Route]:
        def route(path: str, fn: Any, methods: list[str]) -> Route:
            async def serve(request: Request) -> Response:
                try:
                    return await fn(request)
                except BadRequest as exc:
                    return _problem(400, str(exc))

            return Route("/_emulator" + path, serve, methods=methods)

        return [
            route("/healthz", self.healthz, ["GET"]),
            route("/config", self.config, ["GET"]),
            route("/requests", self.requests, ["GET"]),
            route("/callbacks", self.callbacks, ["GET"]),
            route("/calls", self.calls, ["GET"]),
            route("/calls/{sid}", self.call, ["GET"]),
            route("/conferences", self.conferences, ["GET"]),
            route("/conferences/{key}", self.conference, ["GET"]),
            route("/callees", self.list_callees, ["GET"]),
            route("/callees/{number}", self.callee, ["GET", "PUT", "DELETE"]),
            route("/callees/{number}/next", self.callee_next, ["POST"]),
            route("/faults", self.faults, ["GET", "POST", "DELETE"]),
            route("/inbound", self.inbound, ["POST"]),
            route("/reset", self.reset, ["POST"]),
            route("/stats", self.stats, ["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "live_calls": len(self.core.live_calls()),
                             "account_sid": self.core.account.sid})

    async def config(self, request: Request) -> Response:
        c = self.core.config
        return JSONResponse({
            "account_sid": c.account_sid, "api_keys": sorted(self.core.account.api_keys), "cps": c.cps,
            "over_cps": c.over_cps, "caller_ids": sorted(self.core.caller_ids or []),
            "max_concurrent_requests": c.max_concurrent_requests, "webhook_timeout_s": c.webhook_timeout_s,
            "setup_ms": c.setup_ms, "say_ms_per_char": c.say_ms_per_char, "play_s": c.play_s,
        })

    async def requests(self, request: Request) -> Response:
        q = request.query_params
        match = {k: q[k] for k in ("endpoint", "method", "sid") if k in q}
        return JSONResponse({"requests": self.core.requests.entries(_since(request), **match)})

    async def callbacks(self, request: Request) -> Response:
        q = request.query_params
        match = {k: q[k] for k in ("call_sid", "kind") if k in q}
        return JSONResponse({"callbacks": self.core.callbacks.entries(_since(request), **match)})

    async def calls(self, request: Request) -> Response:
        q = request.query_params
        out = [c.to_json(detail=q.get("detail") == "1") for c in self.core.calls.values()
               if all(q[k] == v for k, v in (("to", c.rec.to), ("status", str(c.rec.status)),
                                            ("direction", c.rec.direction)) if k in q)]
        return JSONResponse({"calls": out})

    async def call(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        call = self.core.calls.get(sid)
        if call is None:
            return _problem(404, f"no call {sid}")
        wait = request.query_params.get("wait")
        if wait is None:
            return JSONResponse(call.to_json())
        if wait not in WAITS:
            raise BadRequest(f"wait must be one of {', '.join(WAITS)}")
        try:
            timeout = min(MAX_WAIT_S, float(request.query_params.get("timeout_s", "30")))
        except ValueError:
            raise BadRequest("timeout_s must be a number") from None
        timed_out = False
        try:
            await self.core.changes.wait_for(lambda: _reached(call, wait), timeout)
        except TimeoutError:
            timed_out = True
        return JSONResponse({**call.to_json(), "wait_timed_out": timed_out})

    async def conferences(self, request: Request) -> Response:
        rooms = self.core.rooms
        return JSONResponse({"conferences": [rooms.to_json(c) for c in rooms.conferences.values()]})

    async def conference(self, request: Request) -> Response:
        conf = self.core.rooms.find(request.path_params["key"])
        if conf is None:
            return _problem(404, f"no conference {request.path_params['key']}")
        return JSONResponse(self.core.rooms.to_json(conf))

    async def list_callees(self, request: Request) -> Response:
        return JSONResponse(self.core.directory.to_json())

    async def callee(self, request: Request) -> Response:
        number = request.path_params["number"]
        directory = self.core.directory
        if request.method == "GET":
            return JSONResponse(callees.to_json(directory.peek(number)))
        if request.method == "DELETE":
            return JSONResponse({"removed": directory.remove(number)})
        callee = _callee(number, await _json(request))
        directory.set(number, callee)
        return JSONResponse(callees.to_json(callee))

    async def callee_next(self, request: Request) -> Response:
        number = request.path_params["number"]
        callee = _callee(number, await _json(request))
        try:
            queued = self.core.directory.push_once(number, callee)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return JSONResponse({"queued": queued, "callee": callees.to_json(callee)})

    async def faults(self, request: Request) -> Response:
        faults = self.core.faults
        if request.method == "POST":
            body = await _json(request)
            if isinstance(body, dict) and "lose_callback" in body:
                faults.lost_callbacks.append(_lost_callback(body))
                return JSONResponse(_faults_json(faults))
            if not isinstance(body, dict):
                raise BadRequest("expected {\"status\": 503, \"count\": 1, \"path_contains\": \"Calls\"}")
            status, count = body.get("status"), body.get("count", 1)
            retry_after = body.get("retry_after_s")
            if not isinstance(status, int) or not (status == 429 or 500 <= status <= 599):
                raise BadRequest("status must be 429 or a 5xx")
            if not isinstance(count, int) or not 1 <= count <= 10_000:
                raise BadRequest("count must be an integer in 1..10000")
            if retry_after is not None and not (isinstance(retry_after, int) and 0 <= retry_after <= 3600):
                raise BadRequest("retry_after_s must be an integer in 0..3600")
            faults.rest.append(Fault(status, count, str(body.get("path_contains", "")), retry_after))
        elif request.method == "DELETE":
            faults.rest.clear()
            faults.lost_callbacks.clear()
        return JSONResponse(_faults_json(faults))

    async def inbound(self, request: Request) -> Response:
        """An inbound call: Twilio fetches the voice webhook `url` and runs it with the scripted caller."""
        body = await _json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected an object")
        url, method = body.get("url"), str(body.get("method", "POST")).upper()
        to, from_ = body.get("to", "+14155550199"), body.get("from", "+14155550100")
        if not isinstance(url, str) or not forms.is_url(url):
            raise BadRequest("url must be an http(s) URL (the voice webhook)")
        if method not in forms.METHODS:
            raise BadRequest("method must be GET or POST")
        for name, value in (("to", to), ("from", from_)):
            if not isinstance(value, str) or not numbers.is_caller_id(value):
                raise BadRequest(f"{name} must be an E.164 number")
        caller = _callee(from_, body["caller"]) if "caller" in body else self.core.directory.pick(from_)
        hook = body.get("status_callback")
        status_callback = None
        if hook is not None:
            if not isinstance(hook, str) or not forms.is_url(hook):
                raise BadRequest("status_callback must be an http(s) URL")
            status_callback = StatusCallback(hook, "POST", frozenset({"initiated", "ringing", "answered", "completed"}))
        call = CallActor(self.core, to=to, from_=from_, direction="inbound", callee=caller,
                         source=Source(url, method), status_callback=status_callback, queued=False).start()
        return JSONResponse({"sid": call.sid, "call": call.to_json(detail=False)}, status_code=201)

    async def reset(self, request: Request) -> Response:
        await self.core.hang_up_all()
        self.core.reset()
        return JSONResponse({"reset": True})

    async def stats(self, request: Request) -> Response:
        core = self.core
        creates = [e["received_at"] for e in core.requests.entries()
                   if e["method"] == "POST" and e["endpoint"] in ("calls", "participants") and e["status"] == 201]
        placed = [c for c in core.calls.values() if c.rec.direction == "outbound-api"]
        dialled = [c.rec.start_time for c in placed if c.rec.start_time is not None]
        spans = [(c.rec.date_created, c.rec.end_time or float("inf")) for c in placed]
        outcomes: dict[str, int] = {}
        amd: dict[str, int] = {}
        for c in placed:
            outcomes[str(c.rec.status)] = outcomes.get(str(c.rec.status), 0) + 1
            if c.rec.answered_by:
                amd[c.rec.answered_by] = amd.get(c.rec.answered_by, 0) + 1
        return JSONResponse({
            "creates": {"total": len(creates), "max_in_any_second": max_in_window(creates, 1.0),
                        "min_interval_s": min_interval(creates), "mean_per_second": mean_rate(creates),
                        "first_at": min(creates, default=None), "last_at": max(creates, default=None)},
            "dials": {"total": len(dialled), "max_in_any_second": max_in_window(dialled, 1.0),
                      "min_interval_s": min_interval(dialled), "mean_per_second": mean_rate(dialled)},
            "calls": {"outbound_api": len(placed), "max_concurrent": max_overlap(spans),
                      "live": sum(1 for c in placed if not c.finished)},
            "outcomes": outcomes,
            "answered_by": amd,
            "refusals": sum(1 for e in core.requests.entries() if e["status"] >= 400),
            "unknown_parameters": sorted({name for e in core.requests.entries() for name in e["unknown"]}),
        })

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.core.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _lost_callback(body: dict[str, Any]) -> LostCallback:
    """{"lose_callback": "status", "call_status": "no-answer", "count": 1}: those callbacks are never sent."""
    kind, count, call_status = body["lose_callback"], body.get("count", 1), body.get("call_status", "")
    if kind not in ("status", "amd"):
        raise BadRequest("lose_callback must be status or amd")
    if not isinstance(count, int) or not 1 <= count <= 10_000:
        raise BadRequest("count must be an integer in 1..10000")
    if not isinstance(call_status, str) or len(call_status) > 32:
        raise BadRequest("call_status must be a Twilio call status")
    return LostCallback(kind, count, call_status)


def _faults_json(faults: Faults) -> dict[str, Any]:
    return {"rest": [f.to_json() for f in faults.rest], "lost_callbacks": [f.to_json() for f in faults.lost_callbacks]}


def _callee(number: str, data: Any) -> callees.Callee:
    try:
        return callees.from_json(data)
    except ValueError as exc:
        raise BadRequest(f"callee for {number}: {exc}") from None


def _reached(call: CallActor, wait: str) -> bool:
    status = str(call.rec.status)
    if wait == "answered":
        return call.rec.answered_at is not None or call.finished
    if wait == "ended":
        return call.finished
    if wait == "report":
        return call.report_complete
    if wait in ("ringing", "in-progress"):
        return status == wait or call.finished
    return status == wait
