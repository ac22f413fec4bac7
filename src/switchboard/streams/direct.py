"""A connection of our own to one Redis node, for the hand-packed hot-path commands.

It uses four redis-py connection internals (`ConnectionPool.make_connection`,
`Connection.send_packed_command(check_health=)`, `read_response`, `disconnect(nowait=)`);
tests/test_streams_direct.py fails loudly if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The longest a write batch (or a read, beyond its BLOCK) may take before the connection is dropped.
WRITE_TIMEOUT_S = 5.0


def single_node(client: redis.Redis) -> bool:
    """Redis Cluster routes each key to its node: only a single node takes the fast path."""
    return not isinstance(client, redis.RedisCluster)


class DirectConnection:
    """Hand-packed commands to one node, with no per-command timeout task.

    No per-command timeout task (redis-py wraps every send in `wait_for` when a socket timeout
    is set); the caller bounds a whole batch instead. Any failure drops the connection, so
    unread replies can never be mistaken for the next batch's; the next use reconnects.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._conn = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._conn.socket_timeout = None

    async def execute(self, parts: list[bytes], replies: int, timeout_s: float | None) -> list[Any]:
        try:
            async with asyncio.timeout(timeout_s):
                await self._conn.send_packed_command(parts, check_health=False)
                return [await self._conn.read_response() for _ in range(replies)]
        except BaseException as exc:
            await self._conn.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"no reply from Redis within {timeout_s}s") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(str(exc)) from exc
            raise

    async def close(self) -> None:
        await self._conn.disconnect()

