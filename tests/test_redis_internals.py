"""The redis-py internals Switchboard's hot path relies on, checked by name so that an upgrade
that changes them fails here, loudly, instead of somewhere in a call.

`switchboard.streams` sends hand-packed RESP (`switchboard.resp`) on a connection of its own
(`DirectConnection`): it takes a raw connection from the client's pool, clears its socket
timeout, writes packed bytes, reads raw replies and drops the connection without waiting.
None of that is redis-py's documented API. pyproject.toml pins redis to the releases these
checks passed on; to lift the pin, install the new release and run this file (and
tests/test_streams.py, tests/test_resp.py) first.
"""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from packaging.requirements import Requirement
from packaging.version import Version

from switchboard import resp

ROOT = Path(__file__).resolve().parents[1]
USER = "src/switchboard/streams/direct.py (DirectConnection, ClusterNodes) and src/switchboard/resp.py"


def internal(what: str, problem: str) -> str:
    return (f"redis-py {redis.__version__}: the internal {what} {problem}. {USER} rely on it: "
            "adapt them or keep redis pinned to the tested range in pyproject.toml")


def test_the_installed_redis_is_inside_the_pinned_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [Requirement(d) for d in project["project"]["dependencies"] if Requirement(d).name == "redis"]
    assert pin.specifier.contains(Version(redis.__version__)), (
        f"redis-py {redis.__version__} is outside the tested range {pin.specifier}: run this file against it, "
        "then widen the pin")
    assert any(s.operator == "<" for s in pin.specifier), "redis must have an upper bound: its internals are used"


def test_the_pool_makes_a_raw_connection_with_the_methods_direct_connection_calls():
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    make = getattr(client.connection_pool, "make_connection", None)
    assert callable(make), internal("ConnectionPool.make_connection()", "is gone")
    conn = make()
    assert hasattr(conn, "socket_timeout"), internal("Connection.socket_timeout", "is gone")
    conn.socket_timeout = None
    for name, params in (("send_packed_command", ("command", "check_health")), ("read_response", ()),
                         ("disconnect", ("nowait",))):
        method = getattr(conn, name, None)
        assert method is not None and inspect.iscoroutinefunction(method), internal(
            f"async Connection.{name}()", "is gone or no longer a coroutine")
        missing = [p for p in params if p not in inspect.signature(method).parameters]
        assert not missing, internal(f"Connection.{name}()", f"no longer takes {missing}")


def test_cluster_and_slot_helpers_are_where_streams_imports_them_from():
    assert isinstance(getattr(aioredis, "RedisCluster", None), type), internal("redis.asyncio.RedisCluster", "is gone")
    from redis.crc import key_slot
    assert key_slot(b"sb:call:{MZ1}:in") == key_slot(b"{MZ1}"), internal("redis.crc.key_slot", "ignores hash tags")


def test_the_cluster_slot_map_and_nodes_have_what_cluster_nodes_uses():
    from redis.asyncio.cluster import ClusterNode, NodesManager
    for name in ("get_node_from_slot", "initialize"):
        assert callable(getattr(NodesManager, name, None)), internal(f"NodesManager.{name}()", "is gone")
    assert "slot" in inspect.signature(NodesManager.get_node_from_slot).parameters, internal(
        "NodesManager.get_node_from_slot()", "no longer takes a slot")
    node = ClusterNode("127.0.0.1", 1, socket_timeout=5)
    assert isinstance(node.connection_class, type) and node.connection_kwargs.get("port") == 1, internal(
        "ClusterNode.connection_class/connection_kwargs", "no longer describe the node's connections")
    conn = node.connection_class(**node.connection_kwargs)
    assert callable(getattr(conn, "send_packed_command", None)), internal("a ClusterNode's connection", "changed")


async def test_packed_commands_round_trip_on_a_raw_connection(redis_url):
    """What DirectConnection does, step by step, against the test session's redis-server."""
    client = aioredis.Redis.from_url(redis_url)
    conn = client.connection_pool.make_connection()
    conn.socket_timeout = None
    key = "internals:{t}:in"
    try:
        out: list[bytes] = []
        resp.XaddPacker().pack(key, 100, b"a", b"\x00\xffpayload", 123, out)
        await conn.send_packed_command(out, check_health=False)
        entry_id = await conn.read_response()
        assert isinstance(entry_id, bytes) and b"-" in entry_id, internal(
            "Connection.read_response()", f"answered XADD with {entry_id!r}, not the raw entry id")
        await conn.send_packed_command(resp.XreadPacker(10, 0).pack([(key, "0-0")]), check_health=False)
        (got,) = resp.entries_from_xread(await conn.read_response())
        assert got == (key.encode(), [(entry_id, {b"k": b"a", b"p": b"\x00\xffpayload", b"t": b"123"})]), internal(
            "Connection.read_response()", f"answered XREAD with {got!r}")
    finally:
        await conn.disconnect(nowait=True)
        await client.delete(key)
        await client.aclose()


@pytest.mark.parametrize("name", ["make_connection", "send_packed_command", "read_response", "disconnect",
                                  "get_node_from_slot", "connection_kwargs"])
def test_the_names_checked_here_are_the_names_streams_uses(name):
    """If streams.py starts using another internal, list it here and check it above."""
    sources = [p.read_text() for p in (ROOT / "src" / "switchboard").rglob("*.py")]
    assert any(name in text for text in sources), f"{name} is no longer used: drop its check"
