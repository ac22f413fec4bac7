"""Prometheus metrics of the agent worker (switchboard_worker_*)."""

from prometheus_client import Counter, Gauge, Histogram

from switchboard.metrics import LATENCY_BUCKETS

LIVE_CALLS = Gauge("switchboard_worker_live_calls", "Calls held by this worker")
CAPACITY = Gauge("switchboard_worker_capacity", "Most calls this worker may hold")
CALLS = Counter("switchboard_worker_calls_total", "Calls finished by this worker, by outcome", ["outcome"])
CLAIMS = Counter("switchboard_worker_claims_total", "Calls claimed", ["kind"])  # new | takeover
for _kind in ("new", "takeover"):
    CLAIMS.labels(_kind)  # exported at 0 from the start, so increase() sees the first takeover
AUDIO_BYTES_TO_DG = Counter("switchboard_worker_audio_bytes_to_deepgram_total", "Caller audio bytes sent to Deepgram")
AUDIO_BYTES_FROM_DG = Counter("switchboard_worker_audio_bytes_from_deepgram_total", "Agent audio bytes from Deepgram")
CALLER_TRANSIT = Histogram(
    "switchboard_worker_caller_audio_transit_seconds",
    "Caller audio from the edge receiving it to the worker sending it to Deepgram",
    buckets=LATENCY_BUCKETS,
)
DG_CONNECT = Histogram(
    "switchboard_worker_deepgram_connect_seconds", "Deepgram connect → SettingsApplied", buckets=LATENCY_BUCKETS
)
DG_ERRORS = Counter("switchboard_worker_deepgram_errors_total", "Deepgram failures by code", ["code"])
DG_RECONNECTS = Counter("switchboard_worker_deepgram_reconnects_total", "Mid-call Deepgram reconnects")
BARGE_INS = Counter("switchboard_worker_barge_ins_total", "UserStartedSpeaking events (clear sent)")
TURN_LATENCY = Histogram(
    "switchboard_worker_agent_turn_latency_seconds",
    "Deepgram's reported total latency per agent turn (AgentStartedSpeaking.total_latency)",
    buckets=LATENCY_BUCKETS,
)
FUNCTION_CALLS = Counter("switchboard_worker_function_calls_total", "Function calls by outcome", ["outcome"])
KEEPALIVES = Counter("switchboard_worker_keepalives_total", "KeepAlive messages sent")
REDIS_ERRORS = Counter("switchboard_worker_redis_errors_total", "Failed Redis operations")
LEASES_LOST = Counter("switchboard_worker_leases_lost_total", "Calls dropped because another worker took the lease")
DRAINS = Counter("switchboard_worker_drains_total", "SIGTERM drains started")
REDIS_WRITE = Histogram(
    "switchboard_worker_redis_write_seconds", "One Redis write pipeline (all calls' pending entries)",
    buckets=LATENCY_BUCKETS,
)
TASKS = Gauge("switchboard_worker_asyncio_tasks", "Live asyncio tasks (a leak shows as growth)")
TURN_STAGE = Histogram(
    "switchboard_worker_turn_stage_seconds",
    "Where a turn's time goes, per stage: caller_to_deepgram and worker_to_edge are Switchboard's "
    "share (edge timestamps carried in the stream entries); deepgram_* are Deepgram's own figures",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
)
REPLIES = Counter(
    "switchboard_worker_replies_total", "Agent replies by what the caller heard (complete | interrupted)", ["outcome"]
)
DEAD_AIR = Counter(
    "switchboard_worker_dead_air_total", "Dead-air watchdog firings by kind and action taken", ["kind", "action"]
)
for _kind, _action in (("agent_stall", "reconnect"), ("agent_stall", "end_call"), ("caller_idle", "reengage"),
                       ("caller_idle", "end_call")):
    DEAD_AIR.labels(_kind, _action)  # at 0 from the start: the alert's rate() sees the first stall
FREE_SLOTS = Gauge(
    "switchboard_worker_free_slots",
    "Calls this worker can still take, as published for admission control (0 while draining)",
)
WEBHOOK_REFUSED = Counter(
    "switchboard_worker_webhook_refused_total",
    "Webhook attempts that got no usable answer, by reason: private_address, scheme, bad_url, unresolvable, "
    "connect, transport, deadline, too_large, encoding",
    ["reason"],
)
WEBHOOKS_UNSIGNED = Gauge(
    "switchboard_worker_webhooks_unsigned", "1 when FUNCTION_SECRET is unset and function webhooks go out unsigned"
)

DTMF_ENTRIES = Counter(
    "switchboard_worker_dtmf_entries_total",
    "Keypad entries by how they ended (terminator | max_digits | timeout | no_input)", ["ended_by"],
)


LOAD = Gauge("switchboard_worker_load",
              "Measured load: CPU seconds per second, or event-loop lag / 20 ms, whichever is higher (smoothed)")
OVERLOADED = Gauge("switchboard_worker_overloaded", "1 while past WORKER_LOAD_THRESHOLD: no new calls claimed")


def observe(metric: str, label: str, value: float) -> None:
    """One of the conversation core's observations (switchboard.conversation.Observe)."""
    if metric == "turn_stage":
        TURN_STAGE.labels(label).observe(value)
    elif metric == "barge_in":
        BARGE_INS.inc()
    elif metric == "dead_air":
        kind, _, taken = label.partition(":")
        DEAD_AIR.labels(kind, taken).inc()
    elif metric == "reply":
        REPLIES.labels(label).inc()
    elif metric == "reconnect":
        DG_RECONNECTS.inc()
    elif metric == "dtmf":
        DTMF_ENTRIES.labels(label).inc()
