"""Fault injection into real processes: no call is lost when a worker, Deepgram or Redis fails.

Slow (each scenario runs live calls through the failure): `-m "not slow"` skips them.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time

import httpx
import orjson
import pytest

from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.load import run_load
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev import procs

from system import System, TcpBalancer, scrape, wait_for

pytestmark = pytest.mark.slow

LONG_CALL = CallScript(turns=5, lead_ms=300, utterance_ms=800, reply_timeout_ms=10_000)


def _owners(system: System, stream_sids: list[str]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for sid in stream_sids:
        owners.setdefault(system.call_record(sid).get("worker", ""), []).append(sid)
    return owners


def _live_stream_sids(system: System, count: int, timeout: float = 15) -> list[str]:
    with system.redis() as client:
        def enough() -> bool:
            return client.zcard(system.keys.live_calls()) >= count
        wait_for(enough, timeout, f"{count} live calls")
        sids = [s.decode() for s in client.zrange(system.keys.live_calls(), 0, -1)]
    wait_for(lambda: all(system.call_record(s).get("state") == "active" for s in sids), timeout, "calls active")
    return sids


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"


def _resumed_at(system: System, sid: str) -> float | None:
    for event in system.events(sid):
        if event["type"] == "deepgram_connected" and event.get("resumed"):
            return float(event["ts"])
    return None


@pytest.fixture()
def fleet(redis_url, tmp_path, key_prefix):
    sb = System(redis_url, key_prefix, tmp_path, workers=3, capacity=20).start()
    yield sb
    sb.stop()


async def test_a_killed_worker_s_calls_are_taken_over_within_two_seconds(fleet):
    load = asyncio.create_task(run_load(SimConfig(url=fleet.edge_url, calls=20, ramp_ms=500, script=LONG_CALL)))
    sids = await asyncio.to_thread(_live_stream_sids, fleet, 20)
    owners = _owners(fleet, sids)
    victim_id, victim_calls = max(owners.items(), key=lambda item: len(item[1]))
    victim = next(s for s in fleet.worker_services if s.name == victim_id)
    await asyncio.sleep(1.0)  # mid-conversation
    killed_at = time.time()
    victim.kill()  # SIGKILL: no drain, no goodbye
    report = (await load).to_dict()
    assert report["calls"]["completed"] == 20, report["calls"]
    gaps = []
    for sid in victim_calls:
        resumed = _resumed_at(fleet, sid)
        assert resumed is not None, f"call {sid} was never resumed"
        assert fleet.call_record(sid)["worker"] != victim_id
        gaps.append(resumed - killed_at)
    print(f"\ntakeover gap over {len(gaps)} calls (kill → Deepgram resumed): {_percentiles(gaps)}")
    assert max(gaps) < 2.5  # the target is 2 s; CI machines are noisy
    for sid in sids:  # a resumed call did not greet again and kept its conversation
        record = fleet.call_record(sid)
        assert record["outcome"] == "completed"
    resumed_sessions = [fleet.emulator_sessions(fleet.call_record(sid)["call_sid"]) for sid in victim_calls]
    assert all(len(sessions) == 2 for sessions in resumed_sessions)
    # The resumed session carries the conversation so far (when there was one) and no greeting.
    assert all("greeting" not in sessions[-1]["settings"]["agent"] for sessions in resumed_sessions)
    assert any(sessions[-1]["settings"]["agent"].get("context") for sessions in resumed_sessions)


async def test_a_rolling_restart_of_every_worker_drops_no_call(fleet):
    load = asyncio.create_task(run_load(SimConfig(url=fleet.edge_url, calls=20, ramp_ms=500,
                                                  script=CallScript(turns=7, lead_ms=300, utterance_ms=800))))
    await asyncio.to_thread(_live_stream_sids, fleet, 20)
    drain_times = []
    for old in list(fleet.worker_services):
        started = time.monotonic()
        code = await asyncio.to_thread(old.stop, 30)  # SIGTERM: drain and hand over
        drain_times.append(time.monotonic() - started)
        assert code == 0
        fleet.worker_services.remove(old)
        fleet.add_worker(f"{old.name.rsplit(':', 1)[-1]}-new")
    report = (await load).to_dict()
    print(f"\nrolling restart: {report['calls']}; drain took {', '.join(f'{t:.2f} s' for t in drain_times)}")
    assert report["calls"]["completed"] == 20 and report["calls"]["failed"] == 0, report["calls"]


async def test_deepgram_dropping_mid_call_is_reconnected_with_context(fleet):
    ident = CallIdentity.random()
    fleet.emulator_faults(drop_after_ms=2500)
    call = asyncio.create_task(run_call(SimConfig(url=fleet.edge_url, script=LONG_CALL), ident=ident))
    try:
        # One drop: once the worker has reconnected, the service is healthy again.
        await asyncio.to_thread(wait_for, lambda: len(fleet.emulator_sessions(ident.call_sid)) >= 2, 15, "reconnect")
    finally:
        fleet.emulator_faults(reset=1)
    result = await call
    assert result.ok, result.failure
    assert result.turns_completed == LONG_CALL.turns
    sessions = fleet.emulator_sessions(result.call_sid)
    assert len(sessions) >= 2  # a session opened just before the fault was lifted drops too
    for resumed in sessions[1:]:
        assert "greeting" not in resumed["settings"]["agent"]
        assert resumed["settings"]["agent"]["context"]["messages"]
    assert any(e["type"] == "deepgram_connected" and e["resumed"] for e in fleet.events(result.stream_sid))


async def test_deepgram_gone_for_good_ends_the_call_cleanly(fleet):
    fleet.emulator_faults(drop_after_ms=800, reject_next=50, reject_status=503)
    try:
        result = await run_call(SimConfig(url=fleet.edge_url, script=LONG_CALL))
    finally:
        fleet.emulator_faults(reset=1)
    assert not result.ok  # the edge hung up on purpose
    record = fleet.wait_call_ended(result.stream_sid)
    assert record["outcome"].startswith("deepgram_")
    assert any(e["type"] == "hangup_requested" for e in fleet.events(result.stream_sid))


async def test_calls_survive_a_redis_restart(redis_url, tmp_path, key_prefix):
    private = procs.RedisServer().start()
    sb = System(private.url, key_prefix, tmp_path, workers=2).start()
    try:
        load = asyncio.create_task(run_load(SimConfig(url=sb.edge_url, calls=5, ramp_ms=200,
                                                      script=CallScript(turns=6, lead_ms=300, utterance_ms=800))))
        await asyncio.to_thread(_live_stream_sids, sb, 5)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private.stop)  # every connection drops; state is lost too
        await asyncio.sleep(2.0)
        await asyncio.to_thread(private.start)
        report = (await load).to_dict()
        print(f"\nredis restart: {report['calls']}")
        assert report["calls"]["started"] == 5
        # Processes stay up and serve new calls once Redis is back.
        assert all(s.alive() for s in sb.services)
        result = await run_call(SimConfig(url=sb.edge_url, script=CallScript(turns=1, lead_ms=300)))
        assert result.ok, result.failure
    finally:
        sb.stop()
        private.stop()


async def test_a_paused_worker_stops_writing_to_calls_it_lost(fleet):
    for extra in fleet.worker_services[1:]:
        extra.stop()
    fleet.worker_services[1:] = []
    load = asyncio.create_task(run_load(SimConfig(url=fleet.edge_url, calls=3, ramp_ms=100, script=LONG_CALL)))
    sids = await asyncio.to_thread(_live_stream_sids, fleet, 3)
    paused = fleet.worker_services[0]
    standby = fleet.add_worker("standby")
    paused.signal(signal.SIGSTOP)
    await asyncio.to_thread(wait_for, lambda: all(_resumed_at(fleet, s) for s in sids), 10, "takeover")
    paused.signal(signal.SIGCONT)
    report = (await load).to_dict()
    assert report["calls"]["completed"] == 3, report["calls"]
    for sid in sids:
        assert fleet.call_record(sid)["worker"].endswith("standby")
    # The paused worker noticed: it released the calls instead of speaking on them.
    port = int(paused.health_url.split(":")[2].split("/")[0])
    assert scrape(port, "switchboard_worker_leases_lost_total") >= 3
    assert standby.alive()


async def test_a_killed_edge_s_calls_reconnect_through_twiml_and_keep_their_conversation(redis_url, tmp_path, key_prefix):
    # Both edges demand the one-time stream token the TwiML carries, as in production.
    tokens = {"EDGE_REQUIRE_STREAM_TOKEN": "true"}
    sb = System(redis_url, key_prefix, tmp_path, workers=2, edge_env=tokens).start()
    spare_port, spare_metrics = procs.free_port(), procs.free_port()
    sb._run(procs.edge(redis_url, spare_port, spare_metrics, KEY_PREFIX=key_prefix, **tokens))
    try:
        async with TcpBalancer([sb.edge_port, spare_port]) as balancer:
            _service, control_port = sb.add_control(edge_public_url=f"ws://127.0.0.1:{balancer.port}/twilio")
            config = SimConfig(url="unused", twiml_url=f"http://127.0.0.1:{control_port}/twiml", calls=5,
                               ramp_ms=200, script=CallScript(turns=6, lead_ms=300, utterance_ms=800))
            load = asyncio.create_task(run_load(config))
            sids = await asyncio.to_thread(_live_stream_sids, sb, 5)
            # A client following one call's live events before the edge dies...
            watched = sb.call_record(sids[0])["call_sid"]
            follower = asyncio.create_task(_sse_events(control_port, "t" * 24, watched))
            await asyncio.sleep(1.0)
            sb.edge.kill()  # every Twilio socket on it drops at once
            report = (await load).to_dict()
            seen = await asyncio.wait_for(follower, 30)
        print(f"\nedge kill: {report['calls']}")
        assert report["calls"]["completed"] == 5, report["calls"]
        for detail in report["calls_detail"]:
            new_stream = detail["stream_sid"]
            assert new_stream not in sids  # the call went on as a new stream of the same callSid
            events = sb.events(new_stream)
            resumed = next(e for e in events if e["type"] == "resumed_from_stream")
            assert resumed["stream_sid"] in sids
            assert next(e for e in events if e["type"] == "transcript")["role"] == "user"  # carried over
            assert sb.wait_call_ended(resumed["stream_sid"])["end_reason"] == "moved_to_new_stream"
            sessions = sb.emulator_sessions(detail["call_sid"])
            assert "greeting" not in sessions[-1]["settings"]["agent"]
        # ...is taken over to the call's new stream, sees the conversation go on there without
        # the carried-over lines twice, and ends with the call itself.
        kinds = [kind for kind, _ in seen]
        moved = [event for kind, event in seen if kind == "stream_moved"]
        assert len(moved) == 1 and moved[0]["from"] == sids[0], kinds
        after = kinds[kinds.index("stream_moved") + 1:]
        assert "transcript" in after and "resumed_from_stream" not in after, kinds
        assert seen[-1][0] == "call_ended" and seen[-1][1]["reason"] != "moved_to_new_stream"
        transcript = [(e["role"], e["content"]) for kind, e in seen if kind == "transcript"]
        assert len(transcript) == len(set(transcript))  # nothing twice
    finally:
        sb.stop()


async def _sse_events(port: int, token: str, call_sid: str) -> list[tuple[str, dict]]:
    seen: list[tuple[str, dict]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
        async with client.stream("GET", f"/v1/calls/{call_sid}/events?types=all") as response:
            assert response.status_code == 200
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, orjson.loads(line[6:])))
    return seen
