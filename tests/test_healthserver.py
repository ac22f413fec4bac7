"""The /healthz, /readyz, /metrics server of edge and worker survives any peer: the pure head
parser, then a real HealthServer on port 0 (in this process), then the real edge and worker
processes. After every attack the server still answers /healthz, and nothing reaches the log
at ERROR (asyncio logs an unhandled handler exception there).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from switchboard.httpserver import MAX_HEADERS, HealthServer, Refusal, Request, parse_head
from switchboard_dev import procs

# --- the pure parser -------------------------------------------------------------------------------

@pytest.mark.parametrize("head, expected", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Request("GET", "/healthz")),
    (b"HEAD /metrics?x=1 HTTP/1.0\n\n", Request("HEAD", "/metrics")),
    (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
    (b"GET / HTTP/2.0\r\n\r\n", "400"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "400"),  # a TLS ClientHello
    (b"GET /\x00 HTTP/1.1\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\n : value\r\n\r\n", "400"),
    (b"GET /" + b"a" * 9000, "414"),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1), "431"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 20_000, "431"),
])
def test_each_request_head_is_read_or_refused_with_the_fitting_status(head, expected):
    result = parse_head(head, complete=True)
    if isinstance(expected, Request):
        assert result == expected
    else:
        assert isinstance(result, Refusal) and result.status.startswith(expected), result


def test_a_partial_head_waits_for_more_unless_the_peer_has_finished():
    for partial in (b"", b"GE", b"GET /hea", b"GET /healthz HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"):
        assert parse_head(partial, complete=False) is None
        assert isinstance(parse_head(partial, complete=True), Refusal)


# --- a real server, in this process -------------------------------------------------------------------

async def ready() -> tuple[bool, dict]:
    return True, {"redis": True}


@pytest.fixture()
async def server(caplog):
    caplog.set_level(logging.WARNING)
    health = HealthServer("127.0.0.1", 0, ready, max_connections=4, deadline_s=1.0)
    await health.start()
    yield health
    await health.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def exchange(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send `data`, then read the answer until the server closes (a reset counts as closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(read_timeout):
            return await reader.read(1 << 20)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()


async def healthy(port: int) -> bool:
    answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'{"status":"ok"}')


async def test_the_three_endpoints_answer_get_and_head(server):
    assert await healthy(server.port)
    ready_answer = await exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert ready_answer.startswith(b"HTTP/1.1 200 OK") and ready_answer.endswith(b'{"ready":true,"redis":true}')
    metrics = await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert b"switchboard_metrics_server_rejected_requests_total" in metrics
    head = await exchange(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    assert (await exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")


@pytest.mark.parametrize("size", [70 * 1024, 1024 * 1024])
async def test_an_oversized_request_line_gets_414_and_the_server_keeps_answering(server, size):
    answer = await exchange(server.port, b"GET /" + b"a" * size + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 URI Too Long"), answer[:80]
    assert await healthy(server.port)


async def test_a_header_flood_gets_431(server):
    flood = b"GET /healthz HTTP/1.1\r\n" + b"X-Flood: 1\r\n" * 10_000 + b"\r\n"
    assert (await exchange(server.port, flood)).startswith(b"HTTP/1.1 431")
    long_header = b"GET /healthz HTTP/1.1\r\nX-Long: " + b"v" * 100_000 + b"\r\n\r\n"
    assert (await exchange(server.port, long_header)).startswith(b"HTTP/1.1 431")
    assert await healthy(server.port)


@pytest.mark.parametrize("junk", [
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)) * 4,
    bytes(range(256)) * 400,
    b"\r\n\r\n",
    b"GET\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
async def test_binary_junk_gets_400(server, junk):
    assert (await exchange(server.port, junk)).startswith(b"HTTP/1.1 400 Bad Request")
    assert await healthy(server.port)


async def test_other_methods_get_405(server):
    answer = await exchange(server.port, b"DELETE /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in answer


async def test_a_slowloris_peer_is_cut_at_the_connection_deadline(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.perf_counter()
    writer.write(b"GET /healthz HTTP/1.1\r\n")

    async def trickle() -> None:  # one header byte every 0.1 s: never a whole head within 1 s
        for _ in range(40):
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 3)
    except ConnectionResetError:
        answer = b"<reset>"
    elapsed = time.perf_counter() - started
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert 1.0 <= elapsed < 1.3, elapsed
    assert await healthy(server.port)


async def test_connections_beyond_the_cap_are_turned_away_until_the_idle_ones_are_cut(server):
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    await asyncio.sleep(0.05)  # let the server accept them
    try:
        assert (await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")).startswith(
            (b"HTTP/1.1 503", b"<reset>"))
        # The silent four hold their slots only until the connection deadline.
        for reader, _ in idle:
            assert (await asyncio.wait_for(reader.read(), 2)).startswith(b"HTTP/1.1 408")
    finally:
        for _, writer in idle:
            writer.close()
    assert await healthy(server.port)


# --- the real edge and worker processes --------------------------------------------------------------

@pytest.fixture(scope="module")
def edge_and_worker(redis_url, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("healthserver")
    edge = procs.edge(redis_url, procs.free_port(), procs.free_port(), KEY_PREFIX="health:")
    worker = procs.worker(redis_url, procs.free_port(), "ws://127.0.0.1:9/none", "key", worker_id="health:w1",
                          KEY_PREFIX="health:")
    services = [edge.start(log_dir), worker.start(log_dir)]
    yield services
    for service in services:
        service.stop(timeout=15)


@pytest.mark.parametrize("which", ["edge", "worker"])
async def test_the_edge_and_worker_metrics_ports_survive_an_oversized_request_line(edge_and_worker, which):
    service = edge_and_worker[0 if which == "edge" else 1]
    port = int(service.env["METRICS_PORT"])
    for attack in (b"GET /" + b"a" * (100 * 1024) + b" HTTP/1.1\r\n\r\n",
                   b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
                   bytes(range(256)) * 100):
        answer = await exchange(port, attack)
        assert answer.startswith((b"HTTP/1.1 414", b"HTTP/1.1 431", b"HTTP/1.1 400")), answer[:60]
    assert await healthy(port)
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert b'switchboard_metrics_server_rejected_requests_total{reason="line_too_long"} 1.0' in metrics
    service.alive()
    log = service.log_path.read_text()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-2000:]
