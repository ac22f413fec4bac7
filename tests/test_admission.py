"""Admission control: a call nobody can serve hears a busy or hold message instead of silence.

Unit tests for the pure capacity arithmetic and the simulator's TwiML model, then real
processes: redis-server, the emulator, an edge, two workers of one slot each, and two
control APIs on the same fleet (one in reject mode, the default; one in queue mode). The
simulator plays Twilio: it fetches TwiML, runs <Say>, <Pause>, <Redirect> and <Hangup/> in
order, and follows the <Redirect> after </Connect> when the edge closes a stream.
"""

from __future__ import annotations

import asyncio
import time
from xml.etree import ElementTree

import httpx
import orjson
import pytest
import redis.asyncio as redis_async
import websockets
from websockets.exceptions import ConnectionClosed

from switchboard import capacity
from switchboard.keys import Keys
from switchboard_callsim.call import CallResult, SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_callsim.twiml import Connect, Hangup, Pause, Redirect, Say
from switchboard_callsim.twiml import parse as parse_twiml

from system import System, scrape
from test_e2e_call import _start

CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
SLOTS = 2  # two workers, one call each
BUSY = "Sorry, all our agents are busy right now. Please call again later."  # the default
HOLD = "Please hold the line."
SHORT = CallScript(turns=1, lead_ms=300, utterance_ms=600)


# --- pure --------------------------------------------------------------------------------------------
def test_free_slots_are_live_workers_capacity_minus_claimed_waiting_and_reserved_calls():
    fields = [b"w1", b"10 4 0 5000",
              b"w2", b"10 10 0 5000",
              b"w3", b"10 3 1 5000",  # draining: its slots do not count, its 3 calls will move
              b"w4", b"10 2 0 4999",  # stopped publishing before `now`: dead, its 2 calls will move
              b"w5", b"garbage"]
    # claimed: the live workers' 14 calls plus the 3 + 2 that need a new home.
    view = capacity.fleet_view(fields, 5000, claimed=19, unclaimed=2, reserved=1)
    assert (view.workers, view.capacity, view.live) == (3, 20, 17)
    assert view.unreserved_free == -1 and view.free == -2
    assert capacity.fleet_view(fields, 5000, claimed=14).free == 6
    assert capacity.fleet_view([], 0) == capacity.FleetView()
    assert capacity.parse_worker(b"w", b"5 7 0 1").free == 0  # never negative


def test_claimed_and_unclaimed_calls_come_from_the_group_or_else_from_length_minus_pending():
    assert capacity.dispatch_backlog([{"name": b"workers", "lag": 3, "pending": 7}], 10) == (7, 3)
    # Redis reports no lag once an undelivered entry was deleted.
    assert capacity.dispatch_backlog([{"name": "workers", "lag": None, "pending": 7}], 10) == (7, 3)
    assert capacity.dispatch_backlog([{"name": b"other", "lag": 0, "pending": 0}], 4) == (0, 4)
    assert capacity.dispatch_backlog([], 0) == (0, 0)


def test_the_simulator_runs_twiml_verbs_in_order_and_stops_at_redirect_or_hangup():
    doc = parse_twiml('<Response><Say>one</Say><Pause length="2"/><Connect><Stream url="wss://e/twilio">'
                      '<Parameter name="a" value="b"/></Stream></Connect>'
                      '<Redirect method="POST">https://c/twiml</Redirect><Say>never</Say></Response>')
    assert doc.verbs == (Say("one"), Pause(2.0), Connect("wss://e/twilio", {"a": "b"}), Redirect("https://c/twiml"))
    assert parse_twiml("<Response><Say>bye</Say><Hangup/><Say>never</Say></Response>").verbs == (Say("bye"), Hangup())
    assert parse_twiml("<Response><Pause/></Response>").verbs == (Pause(1.0),)


# --- real processes ------------------------------------------------------------------------------------
class Fleet:
    def __init__(self, system: System, controls: dict[str, int]) -> None:
        self.system = system
        self.controls = controls  # mode → port
        self.keys = Keys(system.prefix)

    def twiml_url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.controls[mode]}/twiml"

    def control_metric(self, mode: str, name: str, labels: str = "") -> float:
        return scrape(self.controls[mode], name, labels)

    def edge_metric(self, name: str, labels: str = "") -> float:
        return scrape(self.system.edge_metrics, name, labels)

    async def view(self) -> capacity.FleetView:
        client = redis_async.Redis.from_url(self.system.redis_url)
        try:
            return (await capacity.read(client, self.keys))[0]
        finally:
            await client.aclose()

    async def until(self, predicate, what: str, timeout: float = 15) -> capacity.FleetView:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.view()
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"fleet never {what}: {view}")
            await asyncio.sleep(0.01)

    async def until_queued(self, call_sid: str, timeout: float = 5) -> None:
        client = redis_async.Redis.from_url(self.system.redis_url)
        try:
            async with asyncio.timeout(timeout):
                while await client.zscore(self.keys.admission_queue(), call_sid) is None:
                    await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    async def fill(self, hold_ms: tuple[int, ...] = (2500, 2500)) -> list[asyncio.Task[CallResult]]:
        """Calls through the reject-mode TwiML that take every slot; returns once the fleet shows full."""
        calls = [asyncio.create_task(run_call(SimConfig(url="unused", twiml_url=self.twiml_url("reject"),
                                                        script=CallScript(turns=1, lead_ms=300, hold_ms=hold))))
                 for hold in hold_ms]
        await self.until(lambda v: v.free <= 0 and v.unclaimed == 0 and v.reserved == 0, "full")
        return calls

    async def idle(self) -> None:
        await self.until(lambda v: v.free == SLOTS and v.unclaimed == 0 and v.reserved == 0, "idle again")


@pytest.fixture(scope="module")
def fleet(redis_url, tmp_path_factory):
    sb = System(redis_url, "admission:", tmp_path_factory.mktemp("admission"), workers=SLOTS, capacity=1,
                edge_env={"EDGE_ADMISSION_WAIT_S": "1"})
    try:
        sb.start()
        controls = {}
        for mode, env in (("reject", {}), ("queue", {"CONTROL_ADMISSION": "queue", "CONTROL_ADMISSION_HOLD_SAY": HOLD,
                                                     "CONTROL_ADMISSION_HOLD_PAUSE_S": "1",
                                                     "CONTROL_ADMISSION_MAX_WAIT_S": "5"})):
            _service, controls[mode] = sb.add_control(**env)
        yield Fleet(sb, controls)
    finally:
        sb.stop()


async def test_with_free_slots_calls_are_admitted_through_twiml_and_the_edge_takes_their_reservation(fleet):
    admitted = fleet.control_metric("reject", "switchboard_control_admissions_total", 'outcome="admitted"')
    reserved = fleet.edge_metric("switchboard_edge_admissions_total", 'outcome="reserved"')
    results = await asyncio.gather(*(run_call(SimConfig(url="unused", twiml_url=fleet.twiml_url("reject"),
                                                        emulator_url=fleet.system.emulator_http, script=SHORT))
                                     for _ in range(SLOTS)))
    for result in results:
        assert result.ok, result.failure
        assert result.byte_exact_in and result.byte_exact_out and result.says == []
    assert fleet.control_metric("reject", "switchboard_control_admissions_total", 'outcome="admitted"') == admitted + 2
    assert fleet.edge_metric("switchboard_edge_admissions_total", 'outcome="reserved"') == reserved + 2
    await fleet.idle()


async def test_a_full_fleet_answers_new_calls_with_the_busy_message_and_a_hangup(fleet):
    rejected = fleet.control_metric("reject", "switchboard_control_admissions_total", 'outcome="rejected"')
    fillers = await fleet.fill()
    turned_away = await run_call(SimConfig(url="unused", twiml_url=fleet.twiml_url("reject"), script=SHORT))
    assert turned_away.says == [BUSY] and turned_away.twiml_hangup
    assert turned_away.streams == []  # Twilio never opened a stream nobody would serve
    assert fleet.control_metric("reject", "switchboard_control_admissions_total", 'outcome="rejected"') == rejected + 1
    assert fleet.control_metric("reject", "switchboard_control_fleet_free_slots") == 0
    for result in await asyncio.gather(*fillers):
        assert result.ok, result.failure  # the calls already in progress were never disturbed
    await fleet.idle()
    assert (await run_call(SimConfig(url="unused", twiml_url=fleet.twiml_url("reject"), script=SHORT))).ok
    await fleet.idle()


async def test_the_edge_refuses_a_stream_it_cannot_place_with_1013_and_twilio_s_redirect_hears_busy(fleet):
    # Streams straight to the edge (no TwiML reservation): the fleet view shows them once claimed.
    started = time.monotonic()
    fillers = [asyncio.create_task(run_call(SimConfig(url=fleet.system.edge_url,
                                                      script=CallScript(turns=1, lead_ms=300, hold_ms=3000))))
               for _ in range(SLOTS)]
    await fleet.until(lambda v: v.free <= 0 and v.unclaimed == 0, "full")
    print(f"\nfleet full in the capacity view {(time.monotonic() - started) * 1000:.0f} ms after two streams started")
    refused = fleet.edge_metric("switchboard_edge_rejected_handshakes_total", 'reason="no_capacity"')

    ident = CallIdentity.random()
    async with websockets.connect(fleet.system.edge_url) as ws:
        await ws.send(CONNECTED)
        sent = time.monotonic()
        await ws.send(_start(ident))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    waited = time.monotonic() - sent
    assert closed.value.rcvd.code == 1013
    assert 0.9 < waited < 3  # EDGE_ADMISSION_WAIT_S=1: it waited for a slot first
    record = fleet.system.call_record(ident.stream_sid)
    assert record["state"] == "ended" and record["outcome"] == "no_capacity"

    # A TwiML Bin that connects straight to the edge, with Switchboard's /twiml/continue after it:
    # the refused stream sends Twilio on, and the caller hears the busy message, not dead air.
    continue_url = fleet.twiml_url("reject") + "/continue"
    bin_doc = (f'<Response><Connect><Stream url="{fleet.system.edge_url}"/></Connect>'
               f'<Redirect method="POST">{continue_url}</Redirect></Response>')
    async with httpx.AsyncClient(transport=TwimlBin(bin_doc), timeout=5) as http:
        result = await run_call(SimConfig(url="unused", twiml_url="http://bin.invalid/twiml", script=SHORT), http=http)
    assert len(result.streams) == 1 and result.redirects == 1
    assert result.says == [BUSY] and result.twiml_hangup
    assert fleet.edge_metric("switchboard_edge_rejected_handshakes_total", 'reason="no_capacity"') == refused + 2
    assert fleet.edge_metric("switchboard_edge_admissions_total", 'outcome="refused"') >= 2
    for result in await asyncio.gather(*fillers):
        assert result.ok, result.failure
    await fleet.idle()


async def test_a_call_in_progress_whose_stream_dropped_is_reconnected_even_when_the_fleet_is_full(fleet):
    fillers = await fleet.fill()
    reconnects = fleet.control_metric("reject", "switchboard_control_admissions_total", 'outcome="reconnect_admitted"')
    live = fleet.system.call_record(_live_stream_sids(fleet)[0])
    async with httpx.AsyncClient(timeout=5) as http:  # what Twilio asks after the stream dropped
        response = await http.post(fleet.twiml_url("reject") + "/continue?attempt=1",
                                   data={"CallSid": live["call_sid"], "AccountSid": live["account_sid"]})
    root = ElementTree.fromstring(response.content)
    assert [child.tag for child in root] == ["Connect", "Redirect"]
    params = {p.get("name"): p.get("value") for p in root.iter("Parameter")}
    assert params["sb_resume_of"] == live["stream_sid"]
    assert fleet.control_metric("reject", "switchboard_control_admissions_total",
                                'outcome="reconnect_admitted"') == reconnects + 1
    # The edge lets the new stream in at once although no slot is free (a new call would
    # wait EDGE_ADMISSION_WAIT_S=1 and be refused); it is served when its old session ends.
    resumed = fleet.edge_metric("switchboard_edge_admissions_total", 'outcome="resumed"')
    ident = CallIdentity.random({"sb_resume_of": "MZ" + "0" * 32})  # a stream no worker holds
    with fleet.system.redis() as client:  # the one-time grant /twiml/continue issues with such a parameter
        client.set(fleet.keys.resume_grant(ident.call_sid), "MZ" + "0" * 32, ex=60)
    async with websockets.connect(fleet.system.edge_url) as ws:
        await ws.send(CONNECTED)
        await ws.send(_start(ident))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.5)  # not closed
        record = fleet.system.call_record(ident.stream_sid)
        assert record["state"] == "waiting"  # announced, queued for the next free worker slot
        await ws.send(orjson.dumps({"event": "stop", "streamSid": ident.stream_sid, "stop": {}}).decode())
    assert fleet.edge_metric("switchboard_edge_admissions_total", 'outcome="resumed"') == resumed + 1
    for result in await asyncio.gather(*fillers):
        assert result.ok, result.failure
    fleet.system.wait_call_ended(ident.stream_sid)
    await fleet.idle()


def _live_stream_sids(fleet: Fleet) -> list[str]:
    with fleet.system.redis() as client:
        return [sid.decode() for sid in client.zrange(fleet.keys.live_calls(), 0, -1)]


async def test_queued_callers_hold_then_connect_first_come_first_served_or_hear_busy_after_the_max_wait(fleet):
    metric = "switchboard_control_admissions_total"
    outcomes = ("queued", "dequeued", "queue_timeout")
    before = {o: fleet.control_metric("queue", metric, f'outcome="{o}"') for o in outcomes}
    # One slot frees after about 2.5 s; the other stays taken past the queue's 5 s limit, and
    # so does the first caller once it has the freed slot (it holds the line for 4 s).
    fillers = await fleet.fill(hold_ms=(0, 6000))
    config = SimConfig(url="unused", twiml_url=fleet.twiml_url("queue"), emulator_url=fleet.system.emulator_http,
                       script=CallScript(turns=1, lead_ms=300, utterance_ms=600, hold_ms=4000))
    ident = CallIdentity.random()
    first = asyncio.create_task(run_call(config, ident))
    await fleet.until_queued(ident.call_sid)  # so the second caller is behind it
    second = asyncio.create_task(run_call(config))
    served, timed_out = await first, await second
    assert served.ok, served.failure
    assert served.byte_exact_in and served.byte_exact_out
    assert served.says and set(served.says) == {HOLD} and served.paused_s >= 1 and len(served.streams) == 1
    assert timed_out.says[-1] == BUSY and set(timed_out.says[:-1]) == {HOLD} and timed_out.twiml_hangup
    assert timed_out.streams == [] and 5 <= timed_out.paused_s <= 9
    after = {o: fleet.control_metric("queue", metric, f'outcome="{o}"') for o in before}
    assert {o: after[o] - before[o] for o in before} == {"queued": 2, "dequeued": 1, "queue_timeout": 1}
    assert fleet.control_metric("queue", "switchboard_control_admission_queue_wait_seconds_count") >= 1
    for result in await asyncio.gather(*fillers):
        assert result.ok, result.failure
    await fleet.idle()


async def test_a_worker_s_slots_count_while_it_heartbeats_and_vanish_when_it_drains_or_dies(fleet):
    spare = fleet.system.add_worker("spare")  # healthy means already counted
    assert (await fleet.view()).capacity == SLOTS + 1
    # The control API's gauge is fresh at every scrape, not only after a /twiml decision.
    assert fleet.control_metric("reject", "switchboard_control_fleet_free_slots") == (await fleet.view()).free
    await asyncio.to_thread(spare.stop)  # SIGTERM: draining, then gone from the fleet at once
    assert (await fleet.view()).capacity == SLOTS
    doomed = fleet.system.add_worker("doomed")
    assert (await fleet.view()).capacity == SLOTS + 1
    killed = time.monotonic()
    doomed.kill()  # no goodbye: its published load lapses after one lease (LEASE_MS=1500)
    await fleet.until(lambda v: v.capacity == SLOTS, "lost the killed worker's slot", timeout=5)
    gone = time.monotonic() - killed
    print(f"\nkilled worker's slot left the capacity view after {gone * 1000:.0f} ms (lease 1500 ms)")
    assert gone < 2.5


class TwimlBin(httpx.AsyncBaseTransport):
    """A static TwiML document at http://bin.invalid/ (like a TwiML Bin); every other URL goes out."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.network = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "bin.invalid":
            return httpx.Response(200, content=self.document.encode(), headers={"Content-Type": "application/xml"})
        return await self.network.handle_async_request(request)

    async def aclose(self) -> None:
        await self.network.aclose()


# --- load-aware admission (issue 17) ------------------------------------------------------------------
def test_a_worker_past_its_load_threshold_counts_no_free_slot_and_old_workers_still_parse():
    fields = [b"w1", b"10 4 0 700 1 5000",  # overloaded: its 6 free slots do not count
              b"w2", b"10 2 0 300 0 5000",
              b"w3", b"10 1 0 5000"]  # a worker from before load was published
    view = capacity.fleet_view(fields, 5000, claimed=7)
    assert (view.workers, view.capacity, view.overloaded) == (3, 20, 1)
    assert capacity.parse_worker(b"w1", b"10 4 0 700 1 5000").load == 0.7
    assert capacity.parse_worker(b"w1", b"10 4 0 700 1 5000").free == 0


def test_the_fleet_is_full_while_every_edge_is_saturated():
    workers = [b"w1", b"10 0 0 100 0 5000"]
    calm = capacity.fleet_view(workers, 5000, edge_fields=[b"e1", b"900 1 5000", b"e2", b"200 0 5000"])
    assert calm.unreserved_free == 10 and not calm.edges_saturated
    saturated = capacity.fleet_view(workers, 5000, edge_fields=[b"e1", b"900 1 5000", b"e2", b"950 1 5000",
                                                                b"e3", b"999 1 10"])  # e3 is dead: not counted
    assert saturated.edges == 2 and saturated.edges_saturated and saturated.unreserved_free == 0


def test_load_is_cpu_or_event_loop_lag_smoothed_with_hysteresis():
    from switchboard.loadmeter import LoadEstimate
    estimate = LoadEstimate(threshold=0.8)
    t, cpu = 0.0, 0.0
    estimate.update(t, cpu, 0.0)
    for _ in range(40):  # 4 s at 30 % of a core, no lag
        t, cpu = t + 0.1, cpu + 0.03
        estimate.update(t, cpu, 0.0)
    assert 0.25 < estimate.load < 0.35 and not estimate.overloaded
    changed = [estimate.update(t := t + 0.1, cpu, 0.0125) for _ in range(40)]  # 12.5 ms late: 1.25
    assert estimate.overloaded and changed.count(True) == 1
    for _ in range(8):  # a little calmer, still above threshold - hysteresis: stays overloaded
        t, cpu = t + 0.1, cpu + 0.075
        estimate.update(t, cpu, 0.0)
    assert estimate.overloaded
    for _ in range(60):
        t, cpu = t + 0.1, cpu + 0.02
        estimate.update(t, cpu, 0.0)
    assert not estimate.overloaded and estimate.load < 0.3


async def test_a_worker_past_its_load_threshold_claims_no_new_call_and_the_fleet_counts_it_full(redis_url, tmp_path,
                                                                                                key_prefix):
    sb = System(redis_url, key_prefix, tmp_path, workers=0).start()
    try:
        sb.add_worker("calm")
        # Any measurable load is past this threshold: the worker is "saturated" from its first samples.
        sb.add_worker("hot", WORKER_LOAD_THRESHOLD="0.0001")
        client = redis_async.Redis.from_url(redis_url)
        try:
            async def fleet() -> capacity.FleetView:
                return (await capacity.read(client, Keys(key_prefix)))[0]
            deadline = time.monotonic() + 10
            while (view := await fleet()).overloaded < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert (view.workers, view.overloaded, view.capacity) == (2, 1, sb.capacity)  # only calm's slots
            await asyncio.sleep(0.5)  # a claim already blocking when "hot" crossed its threshold has ended
            results = await asyncio.gather(*(run_call(SimConfig(url=sb.edge_url, script=SHORT)) for _ in range(4)))
        finally:
            await client.aclose()
        for result in results:
            assert result.ok, result.failure
            assert sb.call_record(result.stream_sid)["worker"].endswith("calm")
        hot = sb.worker_services[-1]
        port = int(hot.health_url.split(":")[2].split("/")[0])
        assert scrape(port, "switchboard_worker_overloaded") == 1 and scrape(port, "switchboard_worker_load") > 0
    finally:
        sb.stop()
