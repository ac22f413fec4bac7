"""The edge in-process: `EdgeServer` on port 0 against the session's real redis-server."""

import asyncio

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from switchboard.entries import Entry, Kind
from switchboard_edge.server import EdgeServer
from switchboard_edge.settings import EdgeSettings


@pytest.fixture()
async def edge(redis_url, key_prefix):
    settings = EdgeSettings(redis_url=redis_url, key_prefix=key_prefix, edge_host="127.0.0.1", edge_port=0,
                            metrics_host="127.0.0.1", metrics_port=0, edge_insecure_no_signature=True,
                            edge_admission=False, edge_id="edge-component")
    async with EdgeServer(settings) as server:
        yield server


async def readyz(port: int) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}/readyz")


async def test_a_background_loop_that_dies_of_a_bug_fails_readiness_by_name_and_asks_the_edge_to_stop(edge):
    assert (await readyz(edge.metrics_port)).status_code == 200
    # A real bug in a real loop: an entry whose payload is not bytes kills the Redis writer.
    edge.writer.append(edge.keys.caller_audio("MZbug"), Entry(Kind.MARK, "not bytes", 0))  # type: ignore[arg-type]
    await asyncio.wait_for(edge.tasks.failed.wait(), 5)
    answer = await readyz(edge.metrics_port)
    assert answer.status_code == 503
    detail = orjson.loads(answer.content)
    assert detail["ready"] is False and detail["failed_tasks"]["writer"].startswith("TypeError")
    async with httpx.AsyncClient() as client:  # the WebSocket port's own probe says so too
        probe = await client.get(f"http://127.0.0.1:{edge.port}/readyz")
    assert probe.status_code == 503 and "writer" in probe.text


async def test_a_socket_that_never_starts_is_closed_by_the_core_s_deadline(redis_url, key_prefix):
    settings = EdgeSettings(redis_url=redis_url, key_prefix=key_prefix, edge_host="127.0.0.1", edge_port=0,
                            metrics_host="127.0.0.1", metrics_port=0, edge_insecure_no_signature=True,
                            edge_start_timeout_s=0.3)
    async with EdgeServer(settings) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008 and ws.close_reason == "no start"
        assert server.tasks.ok
