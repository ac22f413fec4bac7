"""A Redis outage of a few seconds is a pause, not a garbled sentence: both directions arrive
byte-exact and in order, the agent's reply in flight included (issue 17).

Real processes; a private redis-server that is killed mid-reply (everything it held is gone)
and started again, empty, two seconds later.
"""

from __future__ import annotations

import asyncio

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
        assert report["byte_exact_out"] == {"true": CALLS, "false": 0, "none": 0}, report["failed_calls"] \
            if "failed_calls" in report else report["calls_detail"]
        assert report["byte_exact_in"] == {"true": CALLS, "false": 0, "none": 0}
    finally:
        sb.stop()
        private.stop()
