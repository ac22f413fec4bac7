"""switchboard.twilio_rest against the Twilio REST emulator over real sockets: Basic auth with the
account token or an API key, the documented parameters as the emulator records them, Twilio's
errors as clear exceptions, 429 with Retry-After honoured, 5xx retried a bounded number of times,
and a create never sent twice."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from switchboard import twilio_rest
from switchboard.retry import Retry
from switchboard.twilio_rest import CallsApi, Credentials, TwilioApiError
from switchboard_twilio_emulator.config import EmulatorConfig
from switchboard_twilio_emulator.server import TwilioEmulator

TOKEN = "rest-test-token"
KEY_SID, KEY_SECRET = "SK" + "7" * 32, "rest-key-secret"
TO, FROM = "+14155550123", "+14155550100"
HANGUP = "<Response><Hangup/></Response>"


def config(**overrides) -> EmulatorConfig:
    values = {"port": 0, "auth_token": TOKEN, "api_keys": f"{KEY_SID}:{KEY_SECRET}", "setup_ms": 10,
              "log_level": "WARNING", "cps": 50}
    values.update(overrides)
    return EmulatorConfig(**values)


@pytest.fixture()
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def api(http, twilio, *, username=None, secret=TOKEN, **kwargs) -> CallsApi:
    sid = twilio.config.account_sid
    kwargs.setdefault("retry", Retry(base_s=0.05, cap_s=0.2, attempts=3, deadline_s=5))
    return CallsApi(http, twilio.url, Credentials(sid, username or sid, secret), **kwargs)


async def fault(http, twilio, **spec) -> None:
    r = await http.post(f"{twilio.url}/_emulator/faults", json=spec)
    assert r.status_code == 200, r.text


def create_requests(twilio) -> list[dict]:
    return [e for e in twilio.core.requests.entries() if e["endpoint"] == "calls" and e["method"] == "POST"]


async def test_a_call_is_created_with_an_api_key_and_the_documented_parameters(http):
    async with TwilioEmulator(config()) as twilio:
        calls = api(http, twilio, username=KEY_SID, secret=KEY_SECRET)
        params = twilio_rest.create_params(to=TO, from_=FROM, url="http://127.0.0.1:9/twiml",
                                           status_callback="http://127.0.0.1:9/status",
                                           amd=twilio_rest.Amd("http://127.0.0.1:9/amd", timeout_s=10))
        call = await calls.create(params)
        assert call["status"] == "queued" and call["sid"].startswith("CA") and call["to"] == TO
        fetched = await calls.fetch(call["sid"])
        assert fetched["sid"] == call["sid"]
        assert [c["sid"] for c in await calls.list(To=TO)] == [call["sid"]]
        (entry,) = create_requests(twilio)
    assert entry["auth"] == {"ok": True, "kind": "api_key", "username": KEY_SID}
    assert entry["status"] == 201 and entry["unknown"] == [] and entry["notes"] == []


async def test_invalid_numbers_and_bad_credentials_are_clear_errors_and_not_retried(http):
    async with TwilioEmulator(config()) as twilio:
        with pytest.raises(TwilioApiError) as info:
            await api(http, twilio).create([("To", "+15551234567"), ("From", FROM), ("Twiml", HANGUP)])
        assert (info.value.status, info.value.code, info.value.kind) == (400, 21211, "invalid_number")
        assert "To" in info.value.message or "number" in info.value.message
        with pytest.raises(TwilioApiError) as info:
            await api(http, twilio, secret="wrong").create([("To", TO), ("From", FROM), ("Twiml", HANGUP)])
        assert (info.value.status, info.value.kind) == (401, "auth")
        assert len(create_requests(twilio)) == 2  # one each: a 4xx is final


async def test_a_429_waits_for_retry_after_then_succeeds(http):
    async with TwilioEmulator(config()) as twilio:
        await fault(http, twilio, status=429, count=1, path_contains="Calls", retry_after_s=1)
        seen: list[tuple[str, str]] = []
        calls = api(http, twilio, observe=lambda op, result: seen.append((op, result)))
        started = time.monotonic()
        call = await calls.create([("To", TO), ("From", FROM), ("Twiml", HANGUP)])
        waited = time.monotonic() - started
    assert call["status"] == "queued" and 0.95 <= waited < 2.5, waited
    assert seen == [("create", "rate_limited"), ("create", "ok")]


async def test_a_429_asking_for_longer_than_we_may_wait_is_raised_with_its_retry_after(http):
    async with TwilioEmulator(config()) as twilio:
        await fault(http, twilio, status=429, count=1, path_contains="Calls", retry_after_s=30)
        with pytest.raises(TwilioApiError) as info:
            await api(http, twilio, max_retry_after_s=5).create([("To", TO), ("From", FROM), ("Twiml", HANGUP)])
    assert (info.value.kind, info.value.retry_after_s) == ("rate_limited", 30)


async def test_5xx_is_retried_a_bounded_number_of_times(http):
    async with TwilioEmulator(config()) as twilio:
        await fault(http, twilio, status=503, count=1, path_contains="Calls")
        call = await api(http, twilio).create([("To", TO), ("From", FROM), ("Twiml", HANGUP)])
        assert call["status"] == "queued"
        await fault(http, twilio, status=500, count=10, path_contains="Calls")
        with pytest.raises(TwilioApiError) as info:
            await api(http, twilio).create([("To", TO), ("From", FROM), ("Twiml", HANGUP)])
        assert info.value.kind == "server"
        assert len(create_requests(twilio)) == 2 + 3  # 503 then 201; then three 500s and no more


async def test_unreachable_twilio_is_an_error_of_its_own(http):
    calls = CallsApi(http, "http://127.0.0.1:9", Credentials("AC" + "0" * 32, "AC" + "0" * 32, "t"),
                     retry=Retry(base_s=0.01, cap_s=0.02, attempts=2, deadline_s=1))
    with pytest.raises(TwilioApiError) as info:
        await calls.fetch("CA" + "1" * 32)
    assert info.value.kind == "unreachable" and info.value.status == 0


async def test_a_create_whose_answer_was_lost_is_not_sent_again(http):
    """The request reached Twilio but the answer timed out: a second create would dial twice."""
    async def slow_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.append(await reader.read(65536))
        await asyncio.sleep(5)
        writer.close()

    arrived: list[bytes] = []
    server = await asyncio.start_server(slow_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    calls = CallsApi(http, f"http://127.0.0.1:{port}", Credentials("AC" + "0" * 32, "AC" + "0" * 32, "t"),
                     retry=Retry(base_s=0.01, cap_s=0.02, attempts=3, deadline_s=5), timeout_s=0.3)
    try:
        with pytest.raises(TwilioApiError) as info:
            await calls.create([("To", TO), ("From", FROM), ("Twiml", HANGUP)])
    finally:
        server.close()
    assert info.value.kind == "unreachable" and len(arrived) == 1
