"""A second SIGTERM/SIGINT ends a draining service at once; the first still drains.

Real processes, each held in a drain that would last many seconds: the edge by a live call
whose socket never answers the close, the worker by a frozen Redis, control by a request
whose body never finishes arriving.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import time
import urllib.request

import orjson
import pytest

from switchboard_dev import procs

pytestmark = pytest.mark.slow

HELD_S = 1.0  # the first signal must not end the process within this (its drain lasts ≥ 5 s)
FORCED_WITHIN_S = 2.0


def _masked_text_frame(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    else:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _live_call_that_never_answers_a_close(port: int) -> socket.socket:
    """A Twilio stream that starts and then never reads again: the edge's close waits for it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer[:100]
    start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZsecondsignal1", "start": {
        "streamSid": "MZsecondsignal1", "callSid": "CAsecondsignal1", "accountSid": "AC1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}}}
    sock.sendall(_masked_text_frame(orjson.dumps(start).decode()))
    return sock


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _signal_twice(service: procs.Service, signum: int) -> None:
    assert service.proc is not None
    service.signal(signum)
    time.sleep(HELD_S)
    assert service.proc.poll() is None, "the first signal must start a drain, not end the process"
    sent = time.monotonic()
    service.signal(signum)
    code = service.proc.wait(10)
    took = time.monotonic() - sent
    assert code == 128 + signum, code
    assert took < FORCED_WITHIN_S, f"exited {took:.1f} s after the second signal"
    assert service.log_path is not None
    assert "exiting now, without draining" in service.log_path.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_edge_draining_a_live_call_exits_at_once_on_a_second_signal(redis_url, key_prefix, log_dir, signum):
    port, metrics_port = procs.free_port(), procs.free_port()
    edge = procs.edge(redis_url, port, metrics_port, KEY_PREFIX=key_prefix, EDGE_ADMISSION="false").start(log_dir)
    try:
        sock = _live_call_that_never_answers_a_close(port)
        procs.wait_until(lambda: _metric(metrics_port, "switchboard_edge_live_calls") == 1, 10, "the call to be live")
        _signal_twice(edge, signum)
        sock.close()
    finally:
        edge.kill()


def test_the_worker_whose_drain_waits_on_a_frozen_redis_exits_at_once_on_a_second_sigterm(log_dir, key_prefix):
    redis_server = procs.RedisServer().start()  # its own: this test freezes it
    worker = procs.worker(redis_server.url, procs.free_port(), "ws://127.0.0.1:9/v1/agent/converse", "k",
                          worker_id=key_prefix + "w1", KEY_PREFIX=key_prefix)
    try:
        worker.start(log_dir)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)  # every Redis call of the drain now waits for its timeout
        _signal_twice(worker, signal.SIGTERM)
    finally:
        worker.kill()
        if redis_server.proc is not None:
            redis_server.proc.send_signal(signal.SIGCONT)
        redis_server.stop()


def test_control_waiting_for_an_unfinished_request_exits_at_once_on_a_second_sigterm(redis_url, key_prefix, log_dir):
    port = procs.free_port()
    control = procs.control(redis_url, port, api_token="t" * 32, auth_token=None,
                            edge_public_url="wss://edge.example.test/twilio", KEY_PREFIX=key_prefix).start(log_dir)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"PUT /v1/settings/default HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 32 +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"agent\":")
        time.sleep(0.3)  # the request is in the app, waiting for the rest of its body
        _signal_twice(control, signal.SIGTERM)
        sock.close()
    finally:
        control.kill()
