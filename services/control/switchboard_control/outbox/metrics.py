"""Prometheus metrics of call.ended deliveries (switchboard_control_call_ended_*)."""

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "switchboard_control_call_ended_deliveries_total",
    "call.ended delivery decisions by result (delivered|failed|dead|duplicate|deferred|dropped)", ["result"],
)
REFUSED = Counter(
    "switchboard_control_call_ended_refused_total",
    "Delivery attempts that got no usable answer, by reason (egress refusal reasons, http_4xx, http_5xx)", ["reason"],
)
OUTBOX = Gauge("switchboard_control_call_ended_outbox", "Calls whose call.ended waits for delivery (Redis)")
DEAD_LETTERS = Gauge("switchboard_control_call_ended_dead_letters", "call.ended dead letters kept (Redis)")
DELAY = Histogram(
    "switchboard_control_call_ended_delay_seconds", "From a call's end to its call.ended being accepted",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21_600),
)
