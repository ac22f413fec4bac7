"""call.ended, the parts below the delivery loop: Standard Webhooks signatures (checked with the
`standardwebhooks` package when installed), recording links, and the outbox's Redis operations
against the test session's real redis-server."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
import redis.asyncio as aioredis

from switchboard import standard_webhooks
from switchboard.call_ended import OutboxKeys, enqueue
from switchboard_control.outbox import links
from switchboard_control.outbox.payload import _copies, _transfers
from switchboard_control.outbox.store import OutboxStore

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


# --- signatures ------------------------------------------------------------------------------------------
def test_deliveries_verify_with_the_standard_webhooks_library():
    key = standard_webhooks.parse_secret(SECRET)
    body = orjson.dumps({"type": "call.ended", "data": {"call_sid": "CA1"}})
    headers = standard_webhooks.headers(key, "msg_CA1", body)
    assert headers["webhook-signature"].startswith("v1,")
    assert standard_webhooks.verify(key, headers, body)
    assert not standard_webhooks.verify(key, headers, body + b" ")
    assert not standard_webhooks.verify(key, {**headers, "webhook-id": "msg_CA2"}, body)
    stale = standard_webhooks.headers(key, "msg_CA1", body, now=time.time() - 600)
    assert not standard_webhooks.verify(key, stale, body)
    library = pytest.importorskip("standardwebhooks")
    assert library.Webhook(SECRET).verify(body, headers) == {"type": "call.ended", "data": {"call_sid": "CA1"}}
    with pytest.raises(library.WebhookVerificationError):
        library.Webhook(SECRET).verify(body.replace(b"CA1", b"CA2"), headers)


def test_a_secret_must_be_whsec_base64_of_enough_bytes():
    for bad in ("s3cret", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(standard_webhooks.SecretError):
            standard_webhooks.parse_secret(bad)


# --- recording links -------------------------------------------------------------------------------------
def test_a_recording_link_names_one_call_and_expires():
    key = b"k" * 32
    url = links.url("https://control.example.com/", key, "CA1", 2_000_000_000)
    assert url.startswith("https://control.example.com/recordings/CA1.wav?expires=2000000000&sig=")
    sig = url.rsplit("sig=", 1)[1]
    assert links.check(key, "CA1", 2_000_000_000, sig, now=1_999_999_999) is None
    assert links.check(key, "CA2", 2_000_000_000, sig, now=1_999_999_999) == "bad_signature"
    assert links.check(key, "CA1", 2_000_000_001, sig, now=1_999_999_999) == "bad_signature"
    assert links.check(key, "CA1", 2_000_000_000, sig, now=2_000_000_001) == "expired"
    assert links.check(b"other", "CA1", 2_000_000_000, sig, now=1_999_999_999) == "bad_signature"


def test_the_link_key_follows_the_api_token_unless_set():
    from pydantic import SecretStr

    derived = links.link_key(None, SecretStr("a-token-of-24-characters"))
    assert derived and derived != b"a-token-of-24-characters"
    assert links.link_key(SecretStr("explicit"), SecretStr("x" * 24)) == b"explicit"
    assert links.link_key(None, None) is None


# --- the payload's pure parts ----------------------------------------------------------------------------
def test_a_resumed_streams_copied_history_is_counted_once():
    events = [("1", {"type": "transcript"}), ("2", {"type": "function_call"}), ("3", {"type": "transcript"}),
              ("4", {"type": "resumed_from_stream"}), ("5", {"type": "transcript"})]
    assert _copies(events) == (2, 1)
    assert _copies([("1", {"type": "transcript"})]) == (0, 0)


def test_transfer_steps_are_grouped_by_transfer():
    steps = [{"id": "a", "mode": "warm", "target": "+1", "by": "agent", "step": "holding", "ts": 1.0},
             {"id": "a", "step": "no_answer", "reason": "busy", "ts": 2.0},
             {"id": "b", "mode": "cold", "target": "+2", "by": "api", "step": "dialing", "ts": 3.0}]
    grouped = _transfers(steps)
    assert [(t["id"], t["state"], len(t["steps"])) for t in grouped] == [("a", "no_answer", 2), ("b", "dialing", 1)]
    assert grouped[0]["reason"] == "busy" and grouped[0]["steps"][0]["at"].endswith("Z")


# --- the outbox in Redis ---------------------------------------------------------------------------------
@pytest.fixture()
async def store(redis_url, key_prefix):
    client = aioredis.Redis.from_url(redis_url)
    yield OutboxStore(client, OutboxKeys(key_prefix))
    await client.aclose()


async def _enqueue(store: OutboxStore, call_sid: str, ended_at: float) -> None:
    pipe = store._redis.pipeline(transaction=False)
    enqueue(pipe, store.keys, call_sid=call_sid, stream_sid="MZ" + call_sid, ended_at=ended_at, reason="twilio_stop",
            outcome="completed")
    await pipe.execute()


async def test_workers_enqueue_only_while_a_control_api_delivers(store):
    await _enqueue(store, "CA1", 1.0)
    assert await store.counts() == (0, 0)  # nobody announced deliveries: nothing collects
    await store.announce()
    await _enqueue(store, "CA1", 1.0)
    await _enqueue(store, "CA1", 2.0)  # a later stream of the same call: still one entry, its latest end
    assert await store.counts() == (1, 0)
    assert (await store.item("CA1"))["stream_sid"] == "MZCA1"


async def test_a_claim_leases_an_entry_so_no_second_replica_takes_it(store):
    await store.announce()
    await _enqueue(store, "CA1", 1.0)
    now = time.time()
    assert await store.claim(now, 60, 10) == ["CA1"]
    assert await store.claim(now, 60, 10) == []  # leased
    assert await store.claim(now + 61, 60, 10) == ["CA1"]  # the first claimer died: taken over


async def test_delivered_is_once_and_dead_letters_come_back_on_request(store):
    await store.announce()
    await _enqueue(store, "CA1", 1.0)
    await _enqueue(store, "CA2", 1.0)
    await store.keep_payload("CA1", b'{"n": 1}')
    await store.delivered("CA1")
    assert await store.already_sent("CA1") and await store.item("CA1") is None
    assert await store.failed("CA2") == 1 and await store.failed("CA2") == 2
    await store.keep_payload("CA2", b'{"n": 2}')
    await store.dead("CA2", item=await store.item("CA2"), attempts=2, error="HTTP 500", payload=b'{"n": 2}', keep=10)
    assert await store.counts() == (0, 1)
    (letter,) = await store.dead_letters(10)
    assert letter["call_sid"] == "CA2" and letter["error"] == "HTTP 500" and letter["payload"] == {"n": 2}
    assert await store.revive("CA2", 100)
    assert await store.counts() == (1, 0)
    assert await store.payload("CA2") == b'{"n":2}' and await store.claim(time.time(), 60, 10) == ["CA2"]
    assert not await store.revive("CA2", 100)  # gone from the dead letters
