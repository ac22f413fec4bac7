"""Outbound calls, the pure parts: the toll-fraud guard, pacing, calling hours (time zones, DST),
retry policy, a destination's states, Twilio's status order and the Calls API parameters."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from switchboard import campaigns, outbound, twilio_rest
from switchboard.campaigns import CallingHours, Destination, RetryPolicy, RetryRule
from switchboard.tollfraud import DialPolicy, parse_prefixes

NY = ZoneInfo("America/New_York")


# --- toll-fraud guard ---------------------------------------------------------------------------
def test_outbound_dialing_is_refused_until_it_is_turned_on():
    assert DialPolicy().check("+14155550101").reason == "outbound_disabled"


@pytest.mark.parametrize(("number", "reason"), [
    ("+14155550101", None),
    ("+442071838750", None),
    ("+33142685300", "not_allowed"),  # France is not on the list
    ("+19005550101", "premium_rate"),  # inside +1, but premium rate
    ("+447011223344", "premium_rate"),
    ("+8816123456", "premium_rate"),  # satellite: not even allowed, and refused as high-cost first
    ("14155550101", "invalid_number"),
    ("+1415", "invalid_number"),
    ("sip:someone@example.com", "invalid_number"),
    ("+1 415 555 0101", "invalid_number"),
])
def test_the_guard_allows_only_listed_prefixes_and_never_premium_rate(number, reason):
    policy = DialPolicy.parse(enabled=True, allow="+1, 44")
    refusal = policy.check(number)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert refusal.message


def test_prefixes_are_checked_when_configured():
    assert parse_prefixes(" +1, 44 ,+4420,+1") == ("+1", "+44", "+4420")
    for bad in ("+", "+0", "abc", "+1-415"):
        with pytest.raises(ValueError, match="prefix"):
            parse_prefixes(bad)


def test_the_premium_list_can_be_replaced():
    assert DialPolicy.parse(enabled=True, allow="+1", premium="").check("+19005550101") is None


# --- pacing -------------------------------------------------------------------------------------
def test_dials_are_spaced_a_little_more_than_one_over_cps():
    assert campaigns.dial_interval_ms(1) == 1105
    assert campaigns.dial_interval_ms(2) == 565
    assert campaigns.dial_interval_ms(0.5) == 2185
    # cps + 1 dials never fit into one second, even squeezed by 80 ms of jitter
    for cps in (1, 2, 5, 10, 30):
        assert campaigns.dial_interval_ms(cps) * cps >= 1000 + 80
    with pytest.raises(ValueError):
        campaigns.dial_interval_ms(0)


# --- calling hours ------------------------------------------------------------------------------
HOURS = CallingHours(time(9), time(20), frozenset(range(5)))  # Monday to Friday, 09:00-20:00


def at(text: str, zone=NY) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone).astimezone(UTC)


def test_inside_the_window_is_now_and_outside_is_the_next_opening_in_the_destinations_zone():
    assert HOURS.next_open(at("2026-03-04T12:00"), NY) == at("2026-03-04T12:00")  # a Wednesday, noon
    assert HOURS.next_open(at("2026-03-04T20:00"), NY) == at("2026-03-05T09:00")  # closing time is closed
    assert HOURS.next_open(at("2026-03-04T06:00"), NY) == at("2026-03-04T09:00")
    assert HOURS.next_open(at("2026-03-06T21:00"), NY) == at("2026-03-09T09:00")  # Friday night → Monday


def test_daylight_saving_time_moves_the_opening_in_utc():
    # 2026-03-08 clocks go forward in New York: Monday 09:00 is 13:00 UTC, the Friday before 14:00 UTC.
    assert HOURS.next_open(at("2026-03-06T21:00"), NY) == datetime(2026, 3, 9, 13, tzinfo=UTC)
    assert HOURS.next_open(at("2026-03-05T08:00"), NY) == datetime(2026, 3, 5, 14, tzinfo=UTC)


def test_a_window_past_midnight_and_another_zone():
    night = CallingHours(time(22), time(2))
    tokyo = ZoneInfo("Asia/Tokyo")
    assert night.next_open(at("2026-01-10T01:00", tokyo), tokyo) == at("2026-01-10T01:00", tokyo)
    assert night.next_open(at("2026-01-10T03:00", tokyo), tokyo) == at("2026-01-10T22:00", tokyo)


def test_day_names():
    assert campaigns.parse_days(["Mon", "friday"]) == frozenset({0, 4})
    with pytest.raises(ValueError, match="days"):
        campaigns.parse_days(["someday"])


# --- retries and a destination's states ---------------------------------------------------------
POLICY = RetryPolicy({"busy": RetryRule(3, 60), "no-answer": RetryRule(2, 600)})


def test_retry_policy_per_outcome():
    assert POLICY.retry_delay_s("busy", 1) == 60 and POLICY.retry_delay_s("busy", 2) == 60
    assert POLICY.retry_delay_s("busy", 3) is None
    assert POLICY.retry_delay_s("no-answer", 1) == 600 and POLICY.retry_delay_s("no-answer", 2) is None
    assert POLICY.retry_delay_s("completed", 1) is None and POLICY.retry_delay_s("failed", 1) is None


def test_a_destination_is_dialled_retried_and_done_with_every_attempt_kept():
    dest = Destination("+14155550101", {"name": "Ada"})
    dest = campaigns.dialing(dest, "r1", 100.0)
    assert dest.status == "dialing" and dest.current.ref == "r1"
    dest = campaigns.in_call(dest, "CA1")
    dest, again = campaigns.attempt_ended(dest, "busy", 110.0, POLICY)
    assert (dest.status, again) == ("pending", 170.0) and dest.attempts[0].outcome == "busy"
    dest = campaigns.in_call(campaigns.dialing(dest, "r2", 170.0), "CA2")
    dest, again = campaigns.attempt_ended(dest, "completed", 200.0, POLICY, answered_by="human")
    assert (dest.status, dest.outcome, again) == ("done", "completed", None)
    assert [a.call_sid for a in dest.attempts] == ["CA1", "CA2"]
    assert Destination.from_json(dest.to_json()) == dest


def test_an_attempt_that_never_happened_is_not_counted():
    dest = campaigns.dialing(Destination("+14155550101"), "r1", 1.0)
    back = campaigns.requeue(dest, 5.0)
    assert back.status == "pending" and back.attempts == () and back.next_at == 5.0


# --- Twilio ---------------------------------------------------------------------------------------
def test_statuses_only_move_forward():
    assert outbound.advances(None, "queued") and outbound.advances("queued", "ringing")
    assert outbound.advances("ringing", "in-progress") and outbound.advances("in-progress", "completed")
    assert outbound.advances("ringing", "busy")
    assert not outbound.advances("in-progress", "ringing") and not outbound.advances("completed", "canceled")
    assert not outbound.advances("ringing", "no-such-status")


def test_an_answered_call_that_met_a_machine_ends_as_voicemail():
    assert outbound.outcome("completed", "voicemail") == "voicemail"
    assert outbound.outcome("completed", "amd_fax") == "amd_fax"
    assert outbound.outcome("completed", "completed") == "completed"
    assert outbound.outcome("busy", None) == "busy"


def test_create_parameters_are_twilios_documented_names_and_values():
    params = twilio_rest.create_params(
        to="+14155550101", from_="+14155550100", url="https://c.example.com/twiml/outbound?ref=r1",
        status_callback="https://c.example.com/twilio/outbound/status?ref=r1", ring_timeout_s=25,
        amd=twilio_rest.Amd("https://c.example.com/twilio/outbound/amd?ref=r1", timeout_s=20,
                            speech_end_threshold_ms=900),
    )
    assert [v for k, v in params if k == "StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    single = dict(params)
    assert single["Method"] == "POST" and single["StatusCallbackMethod"] == "POST" and single["Timeout"] == "25"
    assert single["MachineDetection"] == "DetectMessageEnd" and single["AsyncAmd"] == "true"
    assert single["AsyncAmdStatusCallbackMethod"] == "POST" and single["MachineDetectionTimeout"] == "20"
    assert single["MachineDetectionSpeechEndThreshold"] == "900"
    assert "MachineDetection" not in dict(twilio_rest.create_params(to="+1", from_="+1", url="u", status_callback="s"))


@pytest.mark.parametrize(("status", "code", "kind"), [
    (401, 20003, "auth"), (429, 20429, "rate_limited"), (503, 20503, "server"), (400, 21211, "invalid_number"),
    (400, 21210, "caller_id"), (404, 20404, "not_found"), (400, 21205, "refused"), (0, None, "unreachable"),
])
def test_twilio_errors_say_what_they_mean(status, code, kind):
    assert twilio_rest.TwilioApiError(status, code, "m").kind == kind


def test_the_dashboard_shows_outbound_outcomes_amd_verdicts_and_campaigns():
    import json
    from pathlib import Path

    board = json.loads((Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/switchboard.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", ()))
    for name in ("switchboard_control_outbound_calls_total", "switchboard_control_amd_verdicts_total",
                 "switchboard_control_amd_detection_seconds_bucket", "switchboard_control_campaign_dials_total",
                 "switchboard_control_outbound_refused_total"):
        assert name in exprs, name


def test_control_refuses_to_start_with_outbound_on_but_half_configured():
    from pydantic import ValidationError

    from switchboard_control.settings import ControlSettings

    base = {"control_insecure_no_auth": True, "_env_file": None}
    off = ControlSettings(**base)
    assert off.dial_policy.check("+14155550101").reason == "outbound_disabled" and off.twilio_credentials() is None
    with pytest.raises(ValidationError) as info:
        ControlSettings(**base, outbound_enabled=True)
    for needed in ("OUTBOUND_ALLOW", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "CONTROL_PUBLIC_URL"):
        assert needed in str(info.value)
    with pytest.raises(ValidationError, match="prefix"):
        ControlSettings(**base, outbound_allow="+1,banana")
    sid = "AC" + "1" * 32
    on = ControlSettings(**base, outbound_enabled=True, outbound_allow="+1", twilio_account_sid=sid,
                         twilio_api_key_sid="SK" + "2" * 32, twilio_api_key_secret="s",
                         control_public_url="https://control.example.com")
    assert on.dial_policy.check("+14155550101") is None
    assert (on.twilio_credentials().username, on.twilio_credentials().secret) == ("SK" + "2" * 32, "s")
    token = ControlSettings(**base, outbound_enabled=True, outbound_allow="+1", twilio_account_sid=sid,
                            twilio_auth_token="t", control_public_url="https://control.example.com")
    assert token.twilio_credentials().username == sid
