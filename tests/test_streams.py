"""StreamWriter/StreamReader against a real redis-server."""

import asyncio

import pytest
import redis.asyncio as aioredis

from switchboard import entries
from switchboard.streams import StreamReader, StreamWriter


@pytest.fixture()
async def client(redis_url):
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_writer_preserves_order_and_coalesces_audio_per_stream(client, key_prefix):
    writer = StreamWriter(client)
    task = asyncio.create_task(writer.run())
    a, b = key_prefix + "a", key_prefix + "b"
    for i in range(50):
        writer.append(a, entries.audio(bytes([i]) * 160, i))
        writer.append(b, entries.audio(bytes([255 - i]) * 160, i))
        if i % 10 == 9:
            writer.append(a, entries.mark(f"m{i}"))
    writer.append(a, entries.stop("bye"))
    await asyncio.wait_for(writer.flushed(), 5)
    rows = await client.xrange(a)
    audio = b"".join(f[b"p"] for _, f in rows if f[b"k"] == b"a")
    assert audio == b"".join(bytes([i]) * 160 for i in range(50))
    kinds = [f[b"k"] for _, f in rows]
    assert kinds[-1] == b"s" and kinds.count(b"m") == 5
    # Marks stay between the audio they were appended between.
    first_mark = kinds.index(b"m")
    before = b"".join(f[b"p"] for _, f in rows[:first_mark] if f[b"k"] == b"a")
    assert before == b"".join(bytes([i]) * 160 for i in range(10))
    assert len(rows) < 50  # coalesced: fewer entries than frames
    assert await client.ttl(a) > 0  # every stream gets a TTL on creation
    task.cancel()


async def test_dropping_pending_audio_keeps_control_entries(client, key_prefix):
    writer = StreamWriter(client)
    key = key_prefix + "out"
    writer.append(key, entries.audio(b"x" * 160, 1))
    writer.append(key, entries.mark("keep"))
    writer.append(key, entries.audio(b"y" * 160, 2))
    assert writer.drop_pending_audio(key) == 320
    writer.append(key, entries.clear())
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(writer.flushed(), 5)
    assert [f[b"k"] for _, f in await client.xrange(key)] == [b"m", b"c"]
    task.cancel()


async def test_reader_follows_streams_added_while_it_is_blocked(redis_url, key_prefix):
    client = aioredis.Redis.from_url(redis_url)
    got: dict[str, list[bytes]] = {}
    arrived = asyncio.Event()

    def handler(key, batch):
        got.setdefault(key, []).extend(f[b"p"] for _, f in batch)
        arrived.set()

    # socket_timeout=None as in production: redis-py stalls cancelling a blocked read otherwise.
    blocking = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    reader = StreamReader(blocking, client, key_prefix + "wake", handler, block_ms=30_000)
    task = asyncio.create_task(reader.run())
    await asyncio.sleep(0.05)  # let it block with no streams at all
    key = key_prefix + "late"
    await client.xadd(key, {b"k": b"a", b"p": b"hello", b"t": b"0"})
    reader.add(key)
    await asyncio.wait_for(arrived.wait(), 5)  # would take 30 s without the wake-up
    assert got[key] == [b"hello"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await blocking.aclose()
    await client.aclose()


async def test_journal_records_waiting_for_redis_are_bounded_oldest_first(client, key_prefix):
    from switchboard.entries import Entry, Kind
    from switchboard.streams import MAX_PENDING_JOURNAL_ITEMS

    writer = StreamWriter(client)  # not running: as if Redis were away
    key = key_prefix + "journal"
    for i in range(MAX_PENDING_JOURNAL_ITEMS * 3):
        writer.append(key, Entry(Kind.JOURNAL, b"%d" % i, i))
    pending = writer._pending[key].items
    assert len(pending) <= MAX_PENDING_JOURNAL_ITEMS
    assert pending[-1].payload == b"%d" % (MAX_PENDING_JOURNAL_ITEMS * 3 - 1)  # the newest kept, in order
    assert [int(p.payload) for p in pending] == sorted(int(p.payload) for p in pending)


async def test_a_writer_that_dies_of_a_bug_releases_its_waiters_instead_of_leaving_them_hanging(client, key_prefix):
    from switchboard.entries import Entry, Kind
    from switchboard.streams import WriterDied

    writer = StreamWriter(client)
    writer.append(key_prefix + "bug", Entry(Kind.MARK, "not bytes", 0))  # type: ignore[arg-type]
    waiter = asyncio.create_task(writer.flushed())
    task = asyncio.create_task(writer.run())
    with pytest.raises(TypeError):
        await asyncio.wait_for(task, 5)
    with pytest.raises(WriterDied):
        await asyncio.wait_for(waiter, 1)
    writer.append(key_prefix + "later", entries.mark("m"))
    assert await asyncio.wait_for(writer.drain(timeout_s=30), 1) is False  # at once, not after 30 s


def test_the_batch_window_waits_only_while_entries_come_often_enough_to_gather_more():
    import redis.asyncio as redis_async

    from switchboard import entries
    from switchboard.streams import StreamWriter

    writer = StreamWriter(redis_async.Redis(), batch_window_s=0.002)
    t = writer._rate.at
    # One call: a frame every 20 ms. Waiting 2 ms would gather nothing: write at once.
    for _ in range(60):
        t += 0.02
        writer.append("k1", entries.audio(b"\xff" * 160, 0))
        assert writer._window_now(t) == 0.0
    # A hundred calls at random phases: 5 frames a millisecond. Now the window pays.
    for _ in range(400):
        t += 0.002
        for n in range(10):
            writer.append(f"k{n}", entries.audio(b"\xff" * 160, 0))
        window = writer._window_now(t)
    assert window == 0.002
    assert StreamWriter(redis_async.Redis(), batch_window_s=0.0)._window_now(t) == 0.0  # 0: never waits


def test_reads_pause_between_them_only_while_entries_come_often_enough():
    import redis.asyncio as redis_async

    from switchboard.streams import StreamReader

    reader = StreamReader(redis_async.Redis(), redis_async.Redis(), "wake", lambda key, batch: None, pace_s=0.002)
    t = reader._rate.at
    for _ in range(50):  # one call: an entry every 20 ms, read one at a time
        t += 0.02
        assert reader._pause_now(1, t) == 0.0
    for _ in range(300):  # a hundred calls: 5 entries a millisecond
        t += 0.001
        pause = reader._pause_now(5, t)
    assert pause == 0.002
