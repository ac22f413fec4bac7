"""Nothing big is read before it is allowed: the control API's limits against a real
switchboard-control (uvicorn) on the session's Redis.

- request bodies: refused by Content-Length before a byte is read, and a chunked body the
  moment it passes the limit, before authentication and before parsing (the process's memory
  is measured while a 40 MB upload is refused);
- nesting depth and per-field bounds of settings: 422 naming the field;
- the number of profiles: 409 past CONTROL_MAX_PROFILES, atomically;
- live-event streams: 429 past the per-token and the total cap, the slot given back when a
  client goes away;
- /docs, /redoc and /openapi.json are not served unless CONTROL_PUBLIC_DOCS is on.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import psutil
import pytest
import redis as redis_sync

from switchboard import entries, wav
from switchboard.agent_settings import AgentSettings, Journal
from switchboard.journal import Recorder, decode_journal
from switchboard.keys import Keys
from switchboard_dev import procs

from test_control_api import API_TOKEN, control_service

PREFIX = "ctllimits:"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
JSON = {"content-type": "application/json"}
BIG = 40 * 1000 * 1000
MAX_PROFILES = 3
# Memory a refused 40 MB request may add to the process (allocator noise, a page of buffers);
# before the limit one such request added 125 MB (a PUT) or 85 MB (/twiml).
RSS_SLACK_MB = 8


@pytest.fixture(scope="module")
def control(redis_url, tmp_path_factory):
    service, port = control_service(redis_url, PREFIX, CONTROL_MAX_PROFILES=str(MAX_PROFILES))
    service.start(tmp_path_factory.mktemp("control-limits"))
    yield service, f"http://127.0.0.1:{port}"
    service.stop()


@pytest.fixture()
def base(control) -> str:
    return control[1]


def refused(base: str, reason: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f'switchboard_control_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


# --- request bodies ----------------------------------------------------------------------------------


@dataclass
class Measured:
    status: int
    seconds: float
    idle_mb: float
    peak_mb: float
    hwm_growth_mb: float


def _hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def send_measured(service: procs.Service, url: str, body: bytes, *, chunked: bool, headers: dict[str, str]) -> Measured:
    """Send `body` (with a Content-Length, or chunked) while sampling the server's RSS."""
    process = psutil.Process(service.proc.pid)
    idle = process.memory_info().rss / 2**20
    hwm_before = _hwm_mb(process.pid)
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss / 2**20)
            done.wait(0.002)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        response = httpx.request(method=url.split(" ")[0], url=url.split(" ")[1],
                                 content=chunks() if chunked else body, headers=headers, timeout=30)
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return Measured(response.status_code, seconds, idle, peak, _hwm_mb(process.pid) - hwm_before)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_anonymous_40_mb_settings_upload_is_refused_before_it_is_read(control, chunked):
    service, base = control
    before = refused(base, "body_too_large")
    body = b'{"think": {"prompt": "' + b"a" * BIG + b'"}}'
    got = send_measured(service, f"PUT {base}/v1/profiles/x", body, chunked=chunked, headers=JSON)
    print(f"PUT 40 MB ({'chunked' if chunked else 'Content-Length'}): {got}")
    assert got.status == 413  # refused for its size before the bearer check could even run
    assert got.seconds < 3
    assert got.peak_mb - got.idle_mb < RSS_SLACK_MB and got.hwm_growth_mb < RSS_SLACK_MB, got
    assert refused(base, "body_too_large") == before + 1
    # A small anonymous request still meets the bearer check.
    assert httpx.put(f"{base}/v1/profiles/x", json={}).status_code == 401


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_40_mb_unsigned_twiml_post_is_refused_at_64_kib(control, chunked):
    service, base = control
    body = b"CallSid=CA1&From=" + b"1" * BIG
    form = {"content-type": "application/x-www-form-urlencoded"}
    got = send_measured(service, f"POST {base}/twiml", body, chunked=chunked, headers=form)
    print(f"POST /twiml 40 MB ({'chunked' if chunked else 'Content-Length'}): {got}")
    assert got.status == 413 and got.seconds < 3
    assert got.peak_mb - got.idle_mb < RSS_SLACK_MB and got.hwm_growth_mb < RSS_SLACK_MB, got
    # /twiml's limit is 64 KiB, whatever CONTROL_MAX_BODY_BYTES says; just under it is read (and
    # refused for its missing signature).
    assert httpx.post(f"{base}/twiml", content=b"a" * (64 * 1024 + 1), headers=form).status_code == 413
    assert httpx.post(f"{base}/twiml", content=b"CallSid=CA1&x=" + b"a" * 60_000, headers=form).status_code == 403


def test_a_body_just_over_the_limit_is_refused_and_one_under_it_is_read(base):
    limit = 1024 * 1024  # CONTROL_MAX_BODY_BYTES' default
    padding = b" " * (limit - 2)
    over = httpx.put(f"{base}/v1/profiles/edge", content=b"{}" + padding + b" ", headers={**AUTH, **JSON})
    assert over.status_code == 413 and over.json() == {"detail": f"request body over {limit} bytes"}
    ok = httpx.put(f"{base}/v1/profiles/edge", content=b"{}" + padding, headers={**AUTH, **JSON})
    assert ok.status_code == 200, ok.text
    assert httpx.delete(f"{base}/v1/profiles/edge", headers=AUTH).status_code == 204


# --- depth and field bounds -----------------------------------------------------------------------------


def nested(levels: int) -> bytes:
    return b'{"a": ' * levels + b"1" + b"}" * levels


def test_settings_nested_900_deep_are_refused_with_422_not_500(base):
    before = refused(base, "too_deep")
    patch = httpx.patch(f"{base}/v1/calls/CAdeep/settings", content=b'{"think": {"endpoint": ' + nested(900) + b"}}",
                        headers={**AUTH, **JSON})
    assert patch.status_code == 422 and "levels deep" in patch.text, patch.text
    for body in (b'{"think": {"endpoint": ' + nested(900) + b"}}",
                 b'{"think": {"provider": {"extra": ' + nested(900) + b"}}}",
                 b'{"think": {"functions": [{"name": "f", "description": "d", "parameters": ' + nested(900) + b"}]}}"):
        put = httpx.put(f"{base}/v1/profiles/deep", content=body, headers={**AUTH, **JSON})
        assert put.status_code == 422 and put.json()["detail"][0]["type"] == "too_deep", put.text
    assert refused(base, "too_deep") == before + 4


def function(name: str, parameters: dict) -> dict:
    return {"name": name, "description": "d", "parameters": parameters}


@pytest.mark.parametrize(("settings", "field", "says"), [
    ({"think": {"prompt": "p" * 25_001}}, ["think", "prompt"], "at most 25000 characters"),
    ({"think": {"functions": [function("f", {"type": "object", "description": "x" * 17_000})]}},
     ["think", "functions", 0, "parameters"], "(at most 16384)"),
    ({"think": {"functions": [function("f", orjson.loads(nested(33)))]}},
     ["think", "functions", 0, "parameters"], "more than 32 levels deep"),
    ({"think": {"provider": {f"field_{i}": i for i in range(33)}}}, ["think", "provider"], "at most 32"),
    ({"speak": {"provider": {"voice_settings": "v" * 5000}}}, ["speak", "provider"], "'voice_settings'"),
    ({"think": {"endpoint": {"url": "https://llm.example.com", "headers": {"x": "h" * 9000}}}},
     ["think", "endpoint"], "(at most 8192)"),
    ({"tags": ["t" * 129]}, ["tags", 0], "at most 128 characters"),
    ({"listen": {"provider": {"keyterms": ["k"] * 101}}}, ["listen", "provider", "keyterms"], "at most 100 items"),
    ({"listen": {"provider": {"keyterms": ["k" * 101]}}}, ["listen", "provider", "keyterms", 0],
     "at most 100 characters"),
    ({"think": {"functions": [function(f"f{i}", {"type": "object", "description": "x" * 5000}) for i in range(60)]}},
     [], "at most 262144"),
], ids=["prompt", "schema-size", "schema-depth", "provider-fields", "provider-value", "endpoint", "tag", "keyterms",
        "keyterm", "document"])
def test_each_open_ended_settings_field_has_a_bound_and_says_which(base, settings, field, says):
    reason = "too_deep" if "levels deep" in says else "field_limit"
    before = refused(base, reason)
    response = httpx.put(f"{base}/v1/profiles/bounded", json=settings, headers=AUTH)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", *field] and says in error["msg"], error
    assert refused(base, reason) == before + 1


# --- number of profiles ---------------------------------------------------------------------------------


async def test_profiles_beyond_the_cap_are_refused_with_409_and_two_writers_cannot_both_take_the_last_place(control):
    _service, base = control
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as api:
        for name in (await api.get("/v1/profiles")).json()["profiles"]:
            await api.delete(f"/v1/profiles/{name['name']}")
        for n in range(MAX_PROFILES - 1):
            assert (await api.put(f"/v1/profiles/p{n}", json={})).status_code == 200
        # Ten writers race for the last place: exactly one gets it.
        racing = await asyncio.gather(*(api.put(f"/v1/profiles/race{n}", json={}) for n in range(10)))
        assert sorted(r.status_code for r in racing) == [200] + [409] * 9
        full = next(r for r in racing if r.status_code == 409)
        assert "CONTROL_MAX_PROFILES" in full.json()["detail"]
        assert len((await api.get("/v1/profiles")).json()["profiles"]) == MAX_PROFILES
        # Replacing one that exists is always allowed; deleting one frees its place.
        assert (await api.put("/v1/profiles/p0", json={"greeting": "Hi"})).status_code == 200
        assert (await api.delete("/v1/profiles/p0")).status_code == 204
        assert (await api.put("/v1/profiles/newcomer", json={})).status_code == 200
    assert refused(base, "too_many_profiles") >= 9


# --- live-event streams -----------------------------------------------------------------------------------


def live_call(redis_url: str, prefix: str, call_sid: str) -> None:
    keys, stream_sid = Keys(prefix), "MZ" + call_sid[2:]
    with redis_sync.Redis.from_url(redis_url) as client:
        client.hset(keys.call(stream_sid), mapping={"call_sid": call_sid, "stream_sid": stream_sid, "state": "active"})
        client.expire(keys.call(stream_sid), 600)
        client.set(keys.call_by_callsid(call_sid), stream_sid, ex=600)


async def until(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def sse_clients(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("switchboard_control_sse_clients "):
            return float(line.split()[-1])
    raise AssertionError("no switchboard_control_sse_clients")


async def test_event_streams_are_capped_per_token_and_in_all_and_a_closed_one_frees_its_slot(redis_url, tmp_path):
    prefix = "ctlsse:"
    # Without auth every bearer value counts as its own client: the per-token and the total cap
    # can both be reached with one process.
    service, port = control_service(redis_url, prefix, CONTROL_INSECURE_NO_AUTH="true",
                                    CONTROL_SSE_MAX_PER_TOKEN="1", CONTROL_SSE_MAX_TOTAL="2")
    del service.env["CONTROL_API_TOKEN"]
    service.start(tmp_path)
    base = f"http://127.0.0.1:{port}"
    live_call(redis_url, prefix, "CA" + "5" * 32)
    path = f"/v1/calls/CA{'5' * 32}/events"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            def as_client(name: str) -> dict[str, str]:
                return {"Authorization": f"Bearer client-{name}"}

            first = http.stream("GET", path, headers=as_client("a"))
            a = await first.__aenter__()
            assert a.status_code == 200
            again = await http.get(path, headers=as_client("a"))
            assert again.status_code == 429 and again.headers["Retry-After"] == "5"  # per token
            async with http.stream("GET", path, headers=as_client("b")) as b:
                assert b.status_code == 200
                third = await http.get(path, headers=as_client("c"))
                assert third.status_code == 429 and "too many open event streams" in third.json()["detail"]
                assert sse_clients(base) == 2
                # Client a goes away: its slot comes back, and c gets in.
                await first.__aexit__(None, None, None)
                await until(lambda: sse_clients(base) == 1, "the closed stream's slot to be given back")
                async with http.stream("GET", path, headers=as_client("c")) as c:
                    assert c.status_code == 200
            await until(lambda: sse_clients(base) == 0, "every slot to be given back")
        assert refused(base, "sse_limit") == 2
    finally:
        service.stop()


# --- a long journal: exported and listened to in the memory of a page ------------------------------------------


def long_journal(minutes: int) -> list:
    """A recorded call of `minutes`: caller frames every 20 ms, a 2 s reply every 10 s (every other
    one cut by the caller), as the worker's Recorder writes them."""
    rec = Recorder(Journal(enabled=True, audio=True))
    t0 = 1_700_000_000_000_000
    made = [rec.start("CAlong", "MZlong", AgentSettings(), t0)]
    for n in range(minutes * 60 * 50):
        t = t0 + n * 20_000
        rec._clock = lambda t=t: t + 2000
        made.append(rec.caller_entry(entries.audio(bytes([n % 256]) * 160, t).fields()))
        if n % 500 == 0:
            made += [rec.agent_audio(bytes([(n + k) % 256]) * 160, t + k * 1000) for k in range(100)]
            if n % 1000 == 0:
                made.append(rec.to_twilio(entries.Entry(entries.Kind.CLEAR, b"", t + 500_000)))
    return made


def download_measured(service: procs.Service, url: str) -> tuple[int, str, float, float, float]:
    """GET `url` to the end while sampling the server's RSS: (bytes, sha256, idle MB, peak MB, seconds)."""
    process = psutil.Process(service.proc.pid)
    idle = peak = process.memory_info().rss / 2**20
    digest, size, started = hashlib.sha256(), 0, time.perf_counter()
    with httpx.stream("GET", url, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
            peak = max(peak, process.memory_info().rss / 2**20)
    return size, digest.hexdigest(), idle, peak, time.perf_counter() - started


def test_a_20_minute_journal_exports_and_plays_back_without_being_held_in_memory(control, redis_url):
    service, base = control
    made = long_journal(20)
    keys, call_sid, stream_sid = Keys(PREFIX), "CA" + "9" * 32, "MZ" + "9" * 32
    with redis_sync.Redis.from_url(redis_url) as client:
        client.delete(keys.journal(stream_sid))
        client.set(keys.call_by_callsid(call_sid), stream_sid, ex=600)
        for start in range(0, len(made), 5000):
            pipe = client.pipeline(transaction=False)
            for entry in made[start:start + 5000]:
                pipe.xadd(keys.journal(stream_sid), entry.fields())
            pipe.execute()
        client.expire(keys.journal(stream_sid), 600)
    records = decode_journal([entry.fields() for entry in made])
    del made
    expected = hashlib.sha256(b"".join(wav.stream(lambda: [records]))).hexdigest()
    try:
        size, digest, idle, peak, seconds = download_measured(service, f"{base}/v1/calls/{call_sid}/recording.wav")
        print(f"recording.wav of {len(records)} entries: {size / 1e6:.1f} MB in {seconds:.1f} s, "
              f"RSS {idle:.1f} → {peak:.1f} MB")
        assert digest == expected and size == 44 + 4 * 20 * 60 * 8000
        assert peak - idle < 3 * RSS_SLACK_MB
        size, _digest, idle, peak, seconds = download_measured(service, f"{base}/v1/calls/{call_sid}/journal")
        print(f"journal export of {len(records)} entries: {size / 1e6:.1f} MB in {seconds:.1f} s, "
              f"RSS {idle:.1f} → {peak:.1f} MB")
        assert peak - idle < 3 * RSS_SLACK_MB
    finally:
        with redis_sync.Redis.from_url(redis_url) as client:
            client.delete(keys.journal(stream_sid))


# --- docs ------------------------------------------------------------------------------------------------------


def test_the_schema_and_its_browsers_are_not_served_by_default(base):
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert httpx.get(f"{base}{path}").status_code == 404, path
