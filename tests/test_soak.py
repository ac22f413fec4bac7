"""Resource hygiene under sustained traffic: no leaked keys, tasks or memory; a stalled
Twilio socket is cut without slowing anyone else.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import orjson
import pytest

from switchboard_callsim.call import SimConfig
from switchboard_callsim.load import run_load
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev.testaudio import SILENCE, caller_frame

from system import System, scrape, wait_for
from test_e2e_call import _start

pytestmark = pytest.mark.slow

SHORT_CALL = CallScript(turns=0, lead_ms=200, hold_ms=200)


def _process_numbers(port: int, prefix: str) -> tuple[float, float]:
    return scrape(port, "process_resident_memory_bytes"), scrape(port, f"{prefix}_asyncio_tasks")


async def test_a_thousand_short_calls_leave_no_keys_tasks_or_memory_behind(redis_url, tmp_path, key_prefix):
    sb = System(redis_url, key_prefix, tmp_path, workers=2, capacity=30,
                worker_env={"CALL_RETENTION_S": "60"}).start()
    worker_port = int(sb.worker_services[0].health_url.split(":")[2].split("/")[0])
    try:
        warm = await run_load(SimConfig(url=sb.edge_url, calls=100, concurrency=25, script=SHORT_CALL))
        assert warm.to_dict()["calls"]["failed"] == 0
        await asyncio.to_thread(_quiet, sb)
        edge_before = _process_numbers(sb.edge_metrics, "switchboard_edge")
        worker_before = _process_numbers(worker_port, "switchboard_worker")
        report = (await run_load(SimConfig(url=sb.edge_url, calls=1000, concurrency=25, script=SHORT_CALL))).to_dict()
        assert report["calls"]["completed"] == 1000, report["calls"]
        await asyncio.to_thread(_quiet, sb)
        edge_after = _process_numbers(sb.edge_metrics, "switchboard_edge")
        worker_after = _process_numbers(worker_port, "switchboard_worker")
        print(f"\n1000 calls: edge RSS {edge_before[0] / 2**20:.1f} → {edge_after[0] / 2**20:.1f} MiB, "
              f"tasks {edge_before[1]:.0f} → {edge_after[1]:.0f}; worker RSS {worker_before[0] / 2**20:.1f} → "
              f"{worker_after[0] / 2**20:.1f} MiB, tasks {worker_before[1]:.0f} → {worker_after[1]:.0f}")
        assert edge_after[1] <= edge_before[1] + 2 and worker_after[1] <= worker_before[1] + 2
        assert edge_after[0] - edge_before[0] < 25 * 2**20
        assert worker_after[0] - worker_before[0] < 25 * 2**20
        with sb.redis() as client:
            leftovers = []
            for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
                ttl = client.ttl(key)
                if (ttl == -1 and key.decode() != sb.keys.dispatch()) or ttl > 3600:
                    leftovers.append(key)
            assert leftovers == [], leftovers[:10]
            assert client.xlen(sb.keys.dispatch()) == 0
            assert client.zcard(sb.keys.live_calls()) == 0
            # Every per-call key lives no longer than the retention policy.
            some_call = next(client.scan_iter(match=f"{key_prefix}call:*:in", count=1000))
            assert 0 < client.ttl(some_call) <= 60
    finally:
        sb.stop()


def _quiet(sb: System) -> None:
    with sb.redis() as client:
        wait_for(lambda: client.zcard(sb.keys.live_calls()) == 0, 20, "no live calls")
        wait_for(lambda: client.xlen(sb.keys.dispatch()) == 0, 20, "dispatch drained")


async def test_a_stalled_twilio_socket_is_cut_and_other_calls_are_unaffected(redis_url, tmp_path, key_prefix):
    sb = System(redis_url, key_prefix, tmp_path, workers=2, capacity=30,
                emulator_args=("--eou-ms", "300", "--think-ms", "50", "--reply-ms", "600"),
                edge_env={"EDGE_OUTBOX_MAX_BYTES": "16384", "EDGE_STALL_TIMEOUT_S": "1",
                          "EDGE_SOCKET_SNDBUF": "8192"}).start()
    try:
        baseline = (await run_load(SimConfig(url=sb.edge_url, calls=20, ramp_ms=300,
                                             script=CallScript(turns=2, lead_ms=300)))).to_dict()
        stalled = asyncio.create_task(asyncio.to_thread(_stalled_caller, sb.edge_port))
        loaded = (await run_load(SimConfig(url=sb.edge_url, calls=20, ramp_ms=300,
                                           script=CallScript(turns=2, lead_ms=300)))).to_dict()
        cut = await stalled
        assert cut, "the edge never cut the stalled socket"
        assert loaded["calls"]["completed"] == 20 and loaded["byte_exact_out"]["false"] == 0
        before, after = baseline["agent_to_caller_transit_ms"]["p95"], loaded["agent_to_caller_transit_ms"]["p95"]
        print(f"\nagent→caller transit p95: {before:.1f} ms without, {after:.1f} ms with a stalled peer")
        assert after < before + 20
        assert scrape(sb.edge_metrics, "switchboard_edge_stalled_peers_total") >= 1
        rss = scrape(sb.edge_metrics, "process_resident_memory_bytes")
        assert rss < 200 * 2**20
    finally:
        sb.stop()


def _stalled_caller(port: int) -> bool:
    """A 'Twilio' that speaks (so the agent answers) but never reads what the edge sends."""
    ident = CallIdentity.random()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
    sock.connect(("127.0.0.1", port))
    sock.settimeout(30)
    sock.sendall(b"GET /twilio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    response = sock.recv(4096)
    assert b"101" in response.split(b"\r\n", 1)[0]

    def frame(text: str) -> bytes:  # masked client text frame
        payload = text.encode()
        head = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                                else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big"))
        return head + b"\0\0\0\0" + payload  # zero mask: payload unchanged

    sock.sendall(frame('{"event":"connected","protocol":"Call","version":"1.0.0"}') + frame(_start(ident)))
    try:
        for n in range(60 * 50):  # up to a minute of short questions, never reading the answers
            audio = caller_frame(1 + n // 60, n, 0) if n % 60 < 10 else SILENCE
            media = {"event": "media", "streamSid": ident.stream_sid,
                     "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                               "payload": base64.b64encode(audio).decode()}}
            sock.sendall(frame(orjson.dumps(media).decode()))
            time.sleep(0.02)
    except OSError:
        return True  # reset by the edge: it cut us
    finally:
        sock.close()
    return False

