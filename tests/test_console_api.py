"""The console's server side: sessions, CSRF, sign-in limits, assets, the ended-calls index, and
the pure pieces (table rows and diffs, filters, the sign-in limiter). End-to-end parts run the
real switchboard-control against the test session's redis-server."""

from __future__ import annotations

import json
import time
from contextlib import closing

import httpx
import pytest
import redis as redis_sync

from switchboard import ended_calls
from switchboard.keys import Keys
from switchboard_control.console import sessions, table
from switchboard_dev import procs

TOKEN = "console-test-token-0123456789"
PREFIX = "consoleapi:"


@pytest.fixture(scope="module")
def control(redis_url, tmp_path_factory):
    port = procs.free_port()
    service = procs.control(redis_url, port, api_token=TOKEN, auth_token=None, edge_public_url="ws://127.0.0.1:1/twilio",
                            KEY_PREFIX=PREFIX, CONSOLE_SIGNIN_FAILURES_PER_MIN="3", CONSOLE_SESSION_TTL_S="60")
    service.start(tmp_path_factory.mktemp("console-api"))
    yield f"http://127.0.0.1:{port}"
    service.stop()


def signed_in(base: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=10)
    answer = client.post("/console/session", json={"token": TOKEN})
    assert answer.status_code == 200, answer.text
    return client, answer.json()["csrf"]


# --- sessions and CSRF ------------------------------------------------------------------------------

def test_sign_in_sets_an_httponly_samesite_strict_cookie_and_never_echoes_the_token(control):
    with httpx.Client(base_url=control) as client:
        answer = client.post("/console/session", json={"token": TOKEN})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; over https the cookie is Secure
    assert TOKEN not in answer.text and TOKEN not in cookie
    assert answer.headers["cache-control"] == "no-store"


def test_the_session_reads_the_api_but_writes_need_its_csrf_token(control, redis_url):
    client, csrf = signed_in(control)
    with closing(client):
        assert client.get("/v1/profiles").status_code == 200
        body = {"think": {"prompt": "Sell cars."}}
        forged = client.put("/v1/profiles/csrf", json=body)  # what a cross-site form post would look like
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.text
        wrong = client.put("/v1/profiles/csrf", json=body, headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403
        assert client.put("/v1/profiles/csrf", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
        # Every API rule still holds for the console: bad input is a 422 naming the field.
        bad = client.put("/v1/profiles/csrf", json={"think": {"provider": {"temperature": 9}}}, headers={"X-CSRF-Token": csrf})
        assert bad.status_code == 422 and "temperature" in bad.text
        metrics = httpx.get(f"{control}/metrics").text
        assert 'switchboard_control_refused_total{reason="console_csrf"}' in metrics


def test_signing_out_ends_the_session_for_every_request(control):
    client, csrf = signed_in(control)
    with closing(client):
        cookie = client.cookies["sb_console"]
        assert client.delete("/console/session").status_code == 403  # sign-out is a write too
        assert client.delete("/console/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    with httpx.Client(base_url=control, cookies={"sb_console": cookie}) as replay:
        assert replay.get("/v1/calls").status_code == 401
        assert replay.get("/console/session").status_code == 401
        assert replay.get("/console/api/fleet").status_code == 401


def test_sessions_are_stored_hashed_and_expire(control, redis_url):
    client, _csrf = signed_in(control)
    with closing(client), redis_sync.Redis.from_url(redis_url) as r:
        cookie = client.cookies["sb_console"]
        key = sessions.session_key(PREFIX, cookie)
        assert r.exists(key) and 0 < r.ttl(key) <= 60
        assert not r.keys(f"*{cookie}*")  # the cookie's value is nowhere in Redis


def test_wrong_tokens_are_refused_and_then_rate_limited(control):
    with httpx.Client(base_url=control) as client:
        codes = [client.post("/console/session", json={"token": f"guess-{n}" + "x" * 20}).status_code for n in range(4)]
        assert codes == [401, 401, 401, 429]
        # Even the right token waits out the minute once the limit is hit: no oracle for a guesser.
        assert client.post("/console/session", json={"token": TOKEN}).status_code == 429
        assert not client.cookies.get("sb_console")
        assert client.post("/console/session", json={"token": "x" * 600}).status_code == 422


def test_the_page_and_assets_come_from_the_control_service_with_a_strict_csp(control):
    with httpx.Client(base_url=control) as client:
        page = client.get("/console/")
        assert page.status_code == 200 and "<title>Switchboard console</title>" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert "http" not in page.text.split("<body>")[0].replace('http-equiv', '')  # nothing from elsewhere
        script = client.get("/console/static/js/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert client.get("/console/static/js/app.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
        assert client.get("/console/static/../settings.py").status_code == 404
        assert client.get("/console/static/%2e%2e/routes.py").status_code == 404
        assert client.get("/console/api/live").status_code == 401


def test_the_api_token_still_works_for_the_console_data_routes(control):
    with httpx.Client(base_url=control, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        fleet = client.get("/console/api/fleet").json()
        assert fleet["redis"]["ok"] is True and fleet["admission"]["mode"] == "reject"
        assert client.get("/console/api/calls/CAnosuch").status_code == 404
        assert client.get("/console/api/live?call=CAnosuch").status_code == 404


# --- ended calls ------------------------------------------------------------------------------------

def _ended(r: redis_sync.Redis, keys: Keys, n: int, ended_at: float, **fields: str) -> None:
    sid = f"MZended{n:04d}"
    params = {"From": fields.pop("From", "+14155550100"), "To": "+14155550199", "Direction": fields.pop("Direction", "inbound")}
    r.hset(keys.call(sid), mapping={"call_sid": f"CAended{n:04d}", "stream_sid": sid, "state": "ended",
                                    "started_at": repr(ended_at - 30), "ended_at": repr(ended_at),
                                    "outcome": "completed", "params": json.dumps(params), **fields})
    pipe = r.pipeline()
    ended_calls.add(pipe, keys, sid, ended_at, 3600)
    pipe.execute()


def test_ended_calls_are_listed_newest_first_and_filtered(control, redis_url):
    keys = Keys(PREFIX)
    now = time.time()
    with redis_sync.Redis.from_url(redis_url) as r:
        _ended(r, keys, 1, now - 300, profile="sales")
        _ended(r, keys, 2, now - 200, profile="support", outcome="deepgram_gone")
        _ended(r, keys, 3, now - 100, profile="sales", Direction="outbound-api", From="+442071234567")
        _ended(r, keys, 4, now - 7200, profile="sales")  # beyond retention: trimmed by the next write
        _ended(r, keys, 5, now - 50, profile="sales")
    with httpx.Client(base_url=control, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        def sids(**query: object) -> list[str]:
            answer = client.get("/v1/calls/ended", params=query)
            assert answer.status_code == 200, answer.text
            return [c["call_sid"] for c in answer.json()["calls"]]

        assert sids() == ["CAended0005", "CAended0003", "CAended0002", "CAended0001"]
        assert sids(profile="sales") == ["CAended0005", "CAended0003", "CAended0001"]
        assert sids(outcome="deepgram_gone") == ["CAended0002"]
        assert sids(direction="outbound") == ["CAended0003"]
        assert sids(number="4420712") == ["CAended0003"]
        assert sids(since=now - 250, until=now - 90) == ["CAended0003", "CAended0002"]
        first = client.get("/v1/calls/ended", params={"limit": 2}).json()
        assert [c["call_sid"] for c in first["calls"]] == ["CAended0005", "CAended0003"]
        assert first["calls"][1]["direction"] == "outbound" and first["calls"][1]["from"] == "+442071234567"
        assert sids(limit=2, before=first["next_before"]) == ["CAended0002", "CAended0001"]
        for bad in ({"number": "<script>"}, {"direction": "sideways"}, {"limit": 0}, {"since": -1}, {"outcome": "A B"}):
            assert client.get("/v1/calls/ended", params=bad).status_code == 422, bad
    with httpx.Client(base_url=control) as anonymous:
        assert anonymous.get("/v1/calls/ended").status_code == 401


# --- pure pieces ------------------------------------------------------------------------------------

def test_csrf_is_needed_only_for_writes():
    session = sessions.Session("id", "csrf-value", 0.0)
    assert sessions.csrf_ok("GET", None, session) and sessions.csrf_ok("HEAD", None, session)
    assert not sessions.csrf_ok("POST", None, session) and not sessions.csrf_ok("DELETE", "other", session)
    assert sessions.csrf_ok("PUT", "csrf-value", session)
    assert sessions.expired(sessions.Session("id", "c", 100.0), now=200.0, max_age_s=50)


def test_the_sign_in_limiter_counts_failures_per_client_in_a_sliding_minute():
    limiter = sessions.SignInLimiter(2)
    limiter.failed("a", 0.0)
    limiter.failed("a", 10.0)
    assert limiter.blocked("a", 20.0) and not limiter.blocked("b", 20.0)
    assert not limiter.blocked("a", 61.0)  # the first failure left the window


def test_a_table_row_masks_secret_parameters_and_diff_names_what_changed():
    fields = {"call_sid": "CA1", "stream_sid": "MZ1", "state": "active", "started_at": "100.5", "turns": "2",
              "params": json.dumps({"From": "+1", "To": "+2", "Direction": "outbound-api", "sb_token": "secret",
                                    "AnsweredBy": "human"})}
    row = table.row(fields)
    assert row["direction"] == "outbound" and row["from"] == "+1" and row["amd"] == "human" and row["turns"] == 2
    assert table.parameters(fields)["sb_token"] == "***"
    changed, gone = table.diff({"MZ1": row, "MZ2": {}}, {"MZ1": {**row, "turns": 3}})
    assert [r["turns"] for r in changed] == [3] and gone == ["MZ2"]
    assert table.diff({"MZ1": row}, {"MZ1": dict(row)}) == ([], [])


def test_ended_call_filters_match_on_the_record():
    fields = {"outcome": "completed", "profile": "sales", "params": json.dumps({"From": "+14155550100", "To": "+1999"})}
    assert ended_calls.matches(fields, 100.0, ended_calls.Filter(since=50, until=150, profile="sales", number="5550"))
    assert not ended_calls.matches(fields, 100.0, ended_calls.Filter(direction="outbound"))
    assert not ended_calls.matches(fields, 100.0, ended_calls.Filter(outcome="no_capacity"))
    assert not ended_calls.matches(fields, 100.0, ended_calls.Filter(since=101))
    assert ended_calls.matches({**fields, "direction": "outbound"}, 100.0, ended_calls.Filter(direction="outbound"))


def test_rows_show_amd_verdicts_and_transfers_when_the_record_has_them():
    fields = {"call_sid": "CA1", "stream_sid": "MZ1", "state": "active", "amd_answered_by": "machine_start",
              "transfer": json.dumps({"to": "+14155550111", "status": "ringing"})}
    row = table.row(fields)
    assert row["amd"] == "machine_start" and row["transfers"] == "+14155550111 · ringing"
    assert table.row({"call_sid": "CA2", "stream_sid": "MZ2"})["transfers"] is None


async def test_outbound_calls_show_their_numbers_verdict_and_ringing_ones_as_dialing(redis_url):
    import redis.asyncio as redis_async

    from switchboard.outbound import OutboundKeys
    from switchboard_control.console import outbound_rows

    okeys = OutboundKeys("obrows:")
    client = redis_async.Redis.from_url(redis_url)
    try:
        await client.hset(okeys.call("r1"), mapping={"ref": "r1", "call_sid": "CAout1", "to": "+4930123", "from": "+1415",
                                                     "answered_by": "human", "status": "in-progress"})
        await client.set(okeys.by_callsid("CAout1"), "r1")
        await client.hset(okeys.call("r2"), mapping={"ref": "r2", "to": "+4930999", "from": "+1415", "status": "ringing",
                                                     "created_at": "100.0"})
        await client.zadd(okeys.pending(), {"r2": 1})
        rows = {"MZ1": table.row({"call_sid": "CAout1", "stream_sid": "MZ1", "state": "active"}),
                "MZ2": table.row({"call_sid": "CAin", "stream_sid": "MZ2", "state": "active"})}
        assert await outbound_rows.decorate(client, "obrows:", rows) == 1
        assert rows["MZ1"]["direction"] == "outbound" and rows["MZ1"]["to"] == "+4930123" and rows["MZ1"]["amd"] == "human"
        assert rows["MZ2"]["direction"] == "inbound"
        assert rows["outbound:r2"]["state"] == "dialing" and rows["outbound:r2"]["to"] == "+4930999"
    finally:
        await client.delete(okeys.call("r1"), okeys.call("r2"), okeys.by_callsid("CAout1"), okeys.pending())
        await client.aclose()
