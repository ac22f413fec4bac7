"""Prometheus metrics of the edge (switchboard_edge_*)."""

from prometheus_client import Counter, Gauge, Histogram

from switchboard.metrics import LATENCY_BUCKETS

LIVE_CALLS = Gauge("switchboard_edge_live_calls", "Twilio streams open on this edge")
CALLS = Counter("switchboard_edge_calls_total", "Twilio streams by outcome", ["outcome"])
FRAMES_IN = Counter("switchboard_edge_media_frames_in_total", "Twilio media frames received")
AUDIO_BYTES_IN = Counter("switchboard_edge_audio_bytes_in_total", "Caller audio bytes received (raw mu-law)")
AUDIO_BYTES_OUT = Counter("switchboard_edge_audio_bytes_out_total", "Agent audio bytes sent to Twilio (raw mu-law)")
CLEARS = Counter("switchboard_edge_clears_total", "Barge-in clears sent to Twilio")
MALFORMED = Counter("switchboard_edge_malformed_frames_total", "Twilio frames rejected", ["reason"])
REJECTED = Counter("switchboard_edge_rejected_handshakes_total", "Upgrades refused", ["reason"])
# The reasons alerts watch are exported at 0 from the start, so rate()/increase() see the first one.
for _reason in ("signature", "no_capacity", "stream_token", "resume_grant", "duplicate_stream", "callsid_in_use"):
    REJECTED.labels(_reason)
REDIS_ERRORS = Counter("switchboard_edge_redis_errors_total", "Failed Redis operations")
REDIS_BATCH = Histogram(
    "switchboard_edge_redis_batch_entries", "Entries per Redis write pipeline",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
AGENT_TRANSIT = Histogram(
    "switchboard_edge_agent_audio_transit_seconds",
    "Agent audio from the worker receiving it to the edge sending it to Twilio",
    buckets=LATENCY_BUCKETS,
)
STALLED = Counter("switchboard_edge_stalled_peers_total", "Twilio sockets cut for not reading")
REDIS_WRITE = Histogram(
    "switchboard_edge_redis_write_seconds", "One Redis write pipeline (all calls' pending entries)",
    buckets=LATENCY_BUCKETS,
)
BARGE_IN = Histogram(
    "switchboard_edge_barge_in_latency_seconds",
    "Barge-in through Switchboard: the worker receiving UserStartedSpeaking → the edge sending clear",
    buckets=LATENCY_BUCKETS,
)
TASKS = Gauge("switchboard_edge_asyncio_tasks", "Live asyncio tasks (a leak shows as growth)")
ADMISSIONS = Counter(
    "switchboard_edge_admissions_total",
    "Stream starts by admission outcome (admitted|reserved|resumed|waited|refused)",
    ["outcome"],
)
ADMISSION_WAITING = Gauge(
    "switchboard_edge_admission_waiting_streams", "Streams held on this edge waiting for a free slot"
)
FLEET_FREE = Gauge(
    "switchboard_edge_fleet_free_slots",
    "Slots the fleet can give new calls: live workers' capacity minus calls claimed, waiting for a worker "
    "or reserved by TwiML (refreshed every 250 ms)",
)
FLEET_CAPACITY = Gauge(
    "switchboard_edge_fleet_capacity_slots", "Slots of all live, non-draining workers, as this edge sees them"
)

LOAD = Gauge("switchboard_edge_load",
             "Measured load: CPU seconds per second, or event-loop lag / 20 ms, whichever is higher (smoothed)")
OVERLOADED = Gauge("switchboard_edge_overloaded", "1 while past EDGE_LOAD_THRESHOLD: new streams are held")
