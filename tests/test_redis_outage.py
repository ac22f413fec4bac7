"""A Redis outage of a few seconds is a pause, not a garbled sentence: both directions arrive
byte-exact and in order, the agent's reply in flight included (issue 17).

Real processes; a private redis-server that is killed mid-reply (everything it held is gone)
and started again, empty, two seconds later.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from switchboard import entries
from switchboard.streams import StreamWriter
from switchboard_callsim.call import SimConfig
from switchboard_callsim.load import run_load
from switchboard_callsim.script import CallScript
from switchboard_dev import procs

from system import System

CALLS = 8


def _live(sb: System) -> int:
    with sb.redis() as client:
        return sum(1 for sid in client.zrange(sb.keys.live_calls(), 0, -1)
                   if client.hget(sb.keys.call(sid.decode()), "state") == b"active")


async def test_both_directions_stay_byte_exact_through_a_two_second_redis_outage_mid_reply(tmp_path, key_prefix):
    private = procs.RedisServer().start()
    # Long replies (12 s), sent three times faster than they play, as a TTS does: a 2 s outage
    # mid-reply leaves 6 s of a reply waiting in the worker for Redis to come back.
    emulator = ("--eou-ms", "300", "--think-ms", "50", "--reply-ms", "12000", "--chunk-ms", "100",
                "--playout-speed", "3")
    sb = System(private.url, key_prefix, tmp_path, workers=2, emulator_args=emulator).start()
    try:
        load = asyncio.create_task(run_load(SimConfig(
            url=sb.edge_url, emulator_url=sb.emulator_http, calls=CALLS, ramp_ms=700,
            script=CallScript(turns=3, lead_ms=300, utterance_ms=600, gap_ms=100, reply_timeout_ms=30000))))
        await asyncio.to_thread(procs.wait_until, lambda: _live(sb) == CALLS, 20, "every call to be live")
        await asyncio.sleep(2.0)  # into the first replies
        await asyncio.to_thread(private.kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(private.start)
        report = (await load).to_dict()
        print(f"\nredis outage: {report['calls']} out {report['byte_exact_out']} in {report['byte_exact_in']}")
        assert report["calls"]["completed"] == CALLS, report["calls"]
        garbled = [(c["call_sid"], c["out_reasons"], c["in_reasons"]) for c in report["calls_detail"]
                   if not (c["byte_exact_out"] and c["byte_exact_in"])]
        assert report["byte_exact_out"] == {"true": CALLS, "false": 0, "none": 0}, garbled
        assert report["byte_exact_in"] == {"true": CALLS, "false": 0, "none": 0}, garbled
    finally:
        sb.stop()
        private.stop()


async def test_entries_redis_acknowledged_and_lost_in_a_restart_come_back_in_place_once():
    # Redis acknowledged entries a reader had not fetched yet, then died: they are gone with its
    # memory. The writer writes its last second again under the same ids after the failure, so
    # the reader, which asks for ids above the last it saw, gets every entry once and in order.
    private = procs.RedisServer().start()
    client = aioredis.Redis.from_url(private.url)
    key = "outage:out"
    writer = StreamWriter(client)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(10):
            writer.append(key, entries.mark(f"m{i}"))
        await asyncio.wait_for(writer.flushed(), 5)
        seen = await client.xread({key: "0-0"}, count=4)  # the reader got four of them before the crash
        last_id = seen[0][1][-1][0]
        await asyncio.to_thread(private.kill)
        for i in range(10, 15):
            writer.append(key, entries.mark(f"m{i}"))  # waits for Redis, in order
        await asyncio.to_thread(private.start)
        await asyncio.wait_for(writer.flushed(), 15)
        reader = aioredis.Redis.from_url(private.url)  # the test's own connection died with the server
        rest = await reader.xread({key: last_id})
        names = [f[b"p"].decode() for _, f in rest[0][1]]
        assert names == [f"m{i}" for i in range(4, 15)]
        assert [i for i, _ in (await reader.xrange(key))[:6]] == [i for i, _ in seen[0][1]] + [
            i for i, _ in rest[0][1][:2]]  # the lost ones back under their ids, before the new ones
        assert await reader.ttl(key) > 0  # and the recreated stream has its TTL again
        await reader.aclose()
    finally:
        writer.stop()
        await asyncio.wait_for(task, 5)
        await writer.close()
        await client.aclose()
        private.stop()
