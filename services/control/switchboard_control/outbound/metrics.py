"""Prometheus metrics of outbound calls and campaigns (switchboard_control_outbound_*, _amd_*, _campaign_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter(
    "switchboard_control_outbound_calls_total",
    "Outbound calls ended, by outcome (completed, voicemail, amd_fax|amd_unknown|amd_timeout, busy, no-answer, "
    "failed, canceled, error)",
    ["outcome"],
)
PLACED = Counter(
    "switchboard_control_outbound_placed_total", "Outbound calls Twilio accepted, by origin (api|campaign)", ["origin"]
)
STATUSES = Counter("switchboard_control_outbound_status_total", "Twilio status callbacks applied, by status",
                   ["status"])
REFUSED = Counter(
    "switchboard_control_outbound_refused_total",
    "Outbound requests refused, by reason (outbound_disabled, invalid_number, not_allowed, premium_rate, "
    "caller_id, rate_limited, no_capacity, twilio_<kind>)",
    ["reason"],
)
CALLBACKS = Counter(
    "switchboard_control_outbound_callbacks_total",
    "Twilio requests about outbound calls (status, amd, twiml) by result (ok, bad_signature, unknown_call, "
    "wrong_call, stale)",
    ["kind", "result"],
)
AMD_VERDICTS = Counter("switchboard_control_amd_verdicts_total", "Twilio's answering-machine verdicts",
                       ["answered_by"])
AMD_DETECTION = Histogram(
    "switchboard_control_amd_detection_seconds", "Twilio's MachineDetectionDuration: from the answer to the verdict",
    buckets=(0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 15, 20, 30, 60),
)
AMD_ACTIONS = Counter(
    "switchboard_control_amd_actions_total", "What answered outbound calls with detection did (greet, "
    "leave_message, hang_up, none = ended before a verdict)", ["action"],
)
GREETING_WAIT = Histogram(
    "switchboard_control_amd_greeting_wait_seconds",
    "How long an outbound call's greeting waited for the verdict (from its stream's start, as the worker measured)",
    buckets=(0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 15, 20, 30, 60),
)
TWILIO_REQUESTS = Counter(
    "switchboard_control_twilio_requests_total",
    "Calls API requests by operation (create, update, fetch, list) and result (ok, auth, rate_limited, server, "
    "invalid_number, caller_id, not_found, refused, unreachable)",
    ["op", "result"],
)
LOOKUPS = Counter(
    "switchboard_control_outbound_lookups_total",
    "Outbound calls looked up at Twilio because no final status came in time, by result (ended: its callback "
    "was lost; moved; unchanged; alive: answered and streaming, not asked; error)", ["result"],
)
WEBHOOKS = Counter(
    "switchboard_control_status_webhooks_total",
    "Status webhooks to users, by result (ok, http_error, refused, dropped)", ["result"],
)
CAMPAIGN_DIALS = Counter(
    "switchboard_control_campaign_dials_total",
    "Campaign dial attempts by result (placed, no_slot, outside_hours, rate_limited, error)", ["result"],
)
CAMPAIGN_IN_FLIGHT = Gauge(
    "switchboard_control_campaign_calls_in_flight",
    "Campaign calls being dialled or in a call (this replica's last look)",
)
CAMPAIGNS_ACTIVE = Gauge(
    "switchboard_control_campaigns_active", "Campaigns running or paused (this replica's last look)"
)
