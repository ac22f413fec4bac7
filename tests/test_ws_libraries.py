"""Both WebSocket libraries carry a call the same way: the edge's Twilio side (EDGE_WS_LIBRARY)
and the worker's Deepgram side (WORKER_WS_LIBRARY).

picows is the default (a fraction of the CPU per message); websockets stays available. Real
processes: a call byte-exact both ways and a barge-in, an oversized frame closed with 1009 for
that stream only, a bad signature refused with 403, health answered on the stream port.
"""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchboard import signature
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_dev import procs

from system import System

AUTH = "edge-library-auth-token"


@pytest.fixture(scope="module", params=["picows", "websockets"])
def edge(request, redis_url, tmp_path_factory):
    port = procs.free_port()
    url = f"ws://127.0.0.1:{port}/twilio"
    sb = System(redis_url, f"lib{request.param}:", tmp_path_factory.mktemp(f"lib-{request.param}"), workers=1,
                auth_token=AUTH, edge_port=port,
                edge_env={"EDGE_WS_LIBRARY": request.param, "EDGE_PUBLIC_URL": url,
                          "EDGE_REQUIRE_STREAM_TOKEN": "false"},
                worker_env={"WORKER_WS_LIBRARY": request.param}).start()
    yield sb
    sb.stop()


async def test_a_call_is_byte_exact_both_ways_with_a_barge_in(edge):
    result = await run_call(SimConfig(url=edge.edge_url, auth_token=AUTH, emulator_url=edge.emulator_http,
                                      script=CallScript(turns=2, lead_ms=300, barge_in=True)))
    assert result.ok, result.failure
    assert result.byte_exact_out and result.byte_exact_in, (result.out_reasons, result.in_reasons)
    assert result.barge_in_latencies_us


async def test_an_oversized_frame_closes_that_stream_with_1009_and_a_bad_signature_gets_403(edge):
    signed = {"X-Twilio-Signature": signature.compute(AUTH, edge.edge_url)}
    async with websockets.connect(edge.edge_url, additional_headers=signed, max_size=None) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send("x" * (128 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(edge.edge_url, additional_headers={"X-Twilio-Signature": "bm9wZQ=="}):
            pass
    assert refused.value.response.status_code == 403
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.edge_port}/healthz", timeout=5) as response:
        assert response.status == 200 and response.read() == b"ok\n"
