"""The direct connection leans on redis-py internals: an upgrade that changes them fails here, loudly."""

import asyncio
import inspect

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import TimeoutError as RedisTimeoutError

from switchboard import resp
from switchboard.streams import DirectConnection


def _parameters(function) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def test_the_redis_py_connection_internals_the_fast_path_uses_are_still_there():
    assert callable(ConnectionPool.make_connection)
    send = _parameters(AbstractConnection.send_packed_command)
    assert list(send)[:2] == ["self", "command"] and "check_health" in send, send
    assert callable(AbstractConnection.read_response)
    assert "nowait" in _parameters(AbstractConnection.disconnect)
    assert "socket_timeout" in _parameters(AbstractConnection.__init__) or hasattr(AbstractConnection, "socket_timeout")


async def test_a_direct_connection_sends_packed_commands_and_reads_their_replies(redis_url, key_prefix):
    client = aioredis.Redis.from_url(redis_url)
    direct = DirectConnection.of_client(client)
    key = key_prefix + "direct"
    try:
        replies = await direct.execute([resp.command(b"SET", key.encode(), b"v"), resp.command(b"GET", key.encode())],
                                       2, 5.0)
        assert replies == [b"OK", b"v"]
    finally:
        await direct.close()
        await client.aclose()


async def test_a_reply_that_does_not_come_in_time_drops_the_connection_and_the_next_use_reconnects(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    direct = DirectConnection.of_client(client)
    try:
        with pytest.raises(RedisTimeoutError):  # BLPOP on nothing blocks for 2 s; we wait 0.1 s
            await direct.execute([resp.command(b"BLPOP", b"sb-test:nothing", b"2")], 1, 0.1)
        # The late reply must not be read as the answer to the next command.
        assert await asyncio.wait_for(direct.execute([resp.command(b"PING")], 1, 5.0), 5) == [b"PONG"]
    finally:
        await direct.close()
        await client.aclose()
