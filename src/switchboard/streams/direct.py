"""Connections of our own to Redis nodes, for the hand-packed hot-path commands.

It uses four redis-py connection internals (`ConnectionPool.make_connection`,
`Connection.send_packed_command(check_health=)`, `read_response`, `disconnect(nowait=)`)
and, on a Redis Cluster, the client's slot map (`nodes_manager.get_node_from_slot`,
`ClusterNode.connection_class`/`connection_kwargs`); tests/test_streams_direct.py fails
loudly if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The longest a write batch (or a read, beyond its BLOCK) may take before the connection is dropped.
WRITE_TIMEOUT_S = 5.0


def single_node(client: redis.Redis) -> bool:
    return not isinstance(client, redis.RedisCluster)


class DirectConnection:
    """Hand-packed commands to one node, with no per-command timeout task.

    No per-command timeout task (redis-py wraps every send in `wait_for` when a socket timeout
    is set); the caller bounds a whole batch instead. Any failure drops the connection, so
    unread replies can never be mistaken for the next batch's; the next use reconnects.
    """

    def __init__(self, connection: AbstractConnection) -> None:
        self._conn = connection
        self._conn.socket_timeout = None

    @classmethod
    def of_client(cls, client: redis.Redis) -> DirectConnection:
        return cls(client.connection_pool.make_connection())  # type: ignore[no-untyped-call]

    @classmethod
    def of_node(cls, node: ClusterNode) -> DirectConnection:
        return cls(node.connection_class(**node.connection_kwargs))

    async def execute(self, parts: list[bytes], replies: int, timeout_s: float | None, *,
                      errors_as_replies: bool = False) -> list[Any]:
        """Send `parts`, read `replies` replies. An error reply raises, or with `errors_as_replies`
        takes its place in the list (the connection stays in step: the error was read whole)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._conn.send_packed_command(parts, check_health=False)
                if not errors_as_replies:
                    return [await self._conn.read_response() for _ in range(replies)]
                answers: list[Any] = []
                for _ in range(replies):
                    try:
                        answers.append(await self._conn.read_response())
                    except ResponseError as exc:
                        answers.append(exc)
                return answers
        except BaseException as exc:
            await self._conn.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"no reply from Redis within {timeout_s}s") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(str(exc)) from exc
            raise

    async def close(self) -> None:
        await self._conn.disconnect()


class ClusterNodes:
    """Where a Redis Cluster keeps a key: its master, and one shared direct connection to each.

    The slot map is redis-py's own, learnt on first use and learnt again by `refresh` when a
    node answers MOVED (a resharding or a failover).
    """

    def __init__(self, client: redis.RedisCluster) -> None:
        self._client = client
        self._ready = False
        self._connections: dict[str, DirectConnection] = {}

    async def node_for(self, slot: int) -> ClusterNode:
        if not self._ready:
            await self._client.initialize()
            self._ready = True
        return self._client.nodes_manager.get_node_from_slot(slot)

    async def connection_for(self, key: str) -> tuple[str, DirectConnection]:
        node = await self.node_for(key_slot(key.encode()))
        connection = self._connections.get(node.name)
        if connection is None:
            connection = self._connections[node.name] = DirectConnection.of_node(node)
        return node.name, connection

    async def refresh(self) -> None:
        await self._client.nodes_manager.initialize()

    async def close(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.close()
