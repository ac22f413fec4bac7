"""Prometheus metrics of the control API (switchboard_control_*) and the middleware that counts requests.

The route label is the route template (`/v1/calls/{call_sid}`), never the concrete path, so a
call id can never become a label value.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchboard.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter(
    "switchboard_control_http_requests_total", "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "switchboard_control_http_request_duration_seconds",
    "Time to the response headers (for SSE: to the start of the stream)",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
COMMANDS = Counter(
    "switchboard_control_commands_total", "Live-call commands by op and result (applied|rejected|timeout)",
    ["op", "result"],
)
TWIML = Counter("switchboard_control_twiml_requests_total", "TwiML webhook requests by result (ok|bad_signature)",
                ["result"])
LIVE_CALLS = Gauge("switchboard_control_live_calls", "Calls not yet ended (Redis, read at scrape time)")


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                HTTP_DURATION.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            HTTP_REQUESTS.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
ADMISSIONS = Counter(
    "switchboard_control_admissions_total",
    "TwiML admission decisions (admitted|dequeued|queued|rejected|queue_timeout|reconnect_admitted)",
    ["outcome"],
)
FLEET_FREE = Gauge(
    "switchboard_control_fleet_free_slots",
    "Free slots for new calls (refreshed at each scrape and each admission decision)",
)
ADMISSION_QUEUE = Gauge(
    "switchboard_control_admission_queue_callers",
    "Callers on hold (queue mode; refreshed at each scrape and each admission decision)",
)
QUEUE_WAIT = Histogram(
    "switchboard_control_admission_queue_wait_seconds",
    "Time a caller spent on hold before a slot freed",
    buckets=(1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600),
)
REFUSED = Counter(
    "switchboard_control_refused_total",
    "Requests refused for their size, depth or count, by reason "
    "(body_too_large|bad_length|too_deep|field_limit|too_many_profiles|sse_limit)",
    ["reason"],
)
SSE_CLIENTS = Gauge("switchboard_control_sse_clients", "Live-event (SSE) streams open on this replica")
