"""The control API's transfer sweeper, when Twilio's callbacks never came: against the Twilio REST
emulator (in process) and the test session's redis-server."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from switchboard.keys import Keys
from switchboard.transfers import RETURN_GRACE_S, State, Transfer, TransferKeys
from switchboard.twilio_rest import CallsApi, Credentials
from switchboard_control.transfers import TransferDesk
from switchboard_twilio_emulator.config import TEST_ACCOUNT_SID, EmulatorConfig
from switchboard_twilio_emulator.server import TwilioEmulator

TOKEN = "sweeper-test-token"
CALLER, TARGET, FROM = "+14155550123", "+14155550177", "+14155550100"


@pytest.fixture()
async def world(redis_url, key_prefix):
    config = EmulatorConfig(port=0, auth_token=TOKEN, setup_ms=20, cps=20, log_level="WARNING")
    people = [f'{CALLER}={{"kind": "person", "ring_s": 0.1}}', f'{TARGET}={{"kind": "no_answer"}}']
    async with TwilioEmulator(config, people) as twilio, httpx.AsyncClient() as http:
        client = aioredis.Redis.from_url(redis_url)
        calls = CallsApi(http, twilio.url, Credentials(TEST_ACCOUNT_SID, TEST_ACCOUNT_SID, TOKEN))
        desk = TransferDesk(client, Keys(key_prefix), calls, "https://control.example.com")
        yield twilio, client, desk, Keys(key_prefix)
        await client.aclose()


async def dial(twilio: TwilioEmulator, to: str, twiml: str) -> str:
    call = await asyncio.to_thread(twilio.client().calls.create, to=to, from_=FROM, twiml=twiml)
    return str(call.sid)


async def store(client, keys: Keys, transfer: Transfer, due: float) -> None:
    tkeys = TransferKeys(keys.prefix)
    await client.hset(tkeys.record(transfer.call_sid), mapping=transfer.to_fields())
    await client.zadd(tkeys.pending(), {transfer.call_sid: due})


async def events(client, keys: Keys, stream_sid: str) -> list[dict]:
    return [orjson.loads(fields[b"p"]) for _id, fields in await client.xrange(keys.events(stream_sid))]


async def test_a_warm_target_nobody_heard_from_is_given_up_and_the_caller_sent_back(world):
    twilio, client, desk, keys = world
    caller = await dial(twilio, CALLER, "<Response><Pause length='30'/></Response>")
    target = await dial(twilio, TARGET, "<Response><Say>whisper</Say></Response>")  # rings, never answers
    await twilio.wait_call(caller, "in-progress", 10)
    transfer = Transfer(id="0123456789ab", call_sid=caller, stream_sid="MZold", mode="warm", target=TARGET, by="agent",
                        state=State.HOLDING, target_call_sid=target)
    await store(client, keys, transfer, time.time() - 1)
    assert await desk.sweep(time.time()) == 1
    record = await client.hgetall(TransferKeys(keys.prefix).record(caller))
    assert record[b"state"] == b"no_answer" and record[b"reason"] == b"no answer within the ring timeout"
    redirect = await twilio.wait_for(lambda: [r for r in twilio.core.requests.entries()
                                              if r.get("path", "").endswith(f"/Calls/{caller}.json")], 10)
    assert "/twiml/transfer/return?call=" in redirect[0]["form"]["Url"][0]
    assert str(twilio.call(target).rec.status) == "canceled"
    (step,) = await events(client, keys, "MZold")
    assert step["type"] == "transfer" and step["step"] == "no_answer" and step["swept"] is True
    # The caller's new stream is expected: the sweeper looks again if it never comes.
    due = await client.zscore(TransferKeys(keys.prefix).pending(), caller)
    assert due == pytest.approx(time.time() + RETURN_GRACE_S, abs=5)


async def test_a_caller_gone_during_a_cold_dial_abandons_it_and_ends_the_agents_stream_for_followers(world):
    twilio, client, desk, keys = world
    caller = await dial(twilio, CALLER, "<Response><Hangup/></Response>")
    await twilio.wait_call(caller, "ended", 10)
    transfer = Transfer(id="0123456789ab", call_sid=caller, stream_sid="MZcold", mode="cold", target=TARGET, by="api",
                        state=State.DIALING)
    await store(client, keys, transfer, time.time() - 1)
    await desk.sweep(time.time())
    record = await client.hgetall(TransferKeys(keys.prefix).record(caller))
    assert record[b"state"] == b"abandoned"
    kinds = [(e["type"], e.get("step") or e.get("outcome")) for e in await events(client, keys, "MZcold")]
    assert kinds == [("transfer", "abandoned"), ("call_ended", "abandoned")]
    assert await client.zscore(TransferKeys(keys.prefix).pending(), caller) is None


async def test_a_caller_still_on_the_line_is_looked_at_again_later(world):
    twilio, client, desk, keys = world
    caller = await dial(twilio, CALLER, "<Response><Pause length='30'/></Response>")
    await twilio.wait_call(caller, "in-progress", 10)
    transfer = Transfer(id="0123456789ab", call_sid=caller, stream_sid="MZback", mode="warm", target=TARGET, by="agent",
                        state=State.RETURNING)
    await store(client, keys, transfer, time.time() - 1)
    await desk.sweep(time.time())
    assert (await client.hget(TransferKeys(keys.prefix).record(caller), "state")) == b"returning"
    assert await client.zscore(TransferKeys(keys.prefix).pending(), caller) > time.time() + 10
    assert await events(client, keys, "MZback") == []
