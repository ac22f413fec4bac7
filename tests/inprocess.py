"""Switchboard inside the test's own event loop: the Deepgram emulator, the edge, the agent
workers and the control API as objects on port 0, against the session's real redis-server.

The component tier's face of the system, as `tests/system.py` is the end-to-end tier's: the
same services, settings and sockets, but no subprocess, so a test starts in milliseconds and a
failure is a traceback from the code under test. Redis and every WebSocket are real; the
control API is driven through httpx's ASGI transport (`api`), so it has no socket of its own.
What needs real processes (signals, SIGKILL, SIGSTOP, images, Redis restarts) stays
end-to-end.

    async with InProcess(redis_url, "cmp:call:", workers=2) as sb:
        result = await run_call(sb.sim(turns=2))
        record = await sb.wait_call_ended(result.stream_sid)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis.asyncio as redis_async
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr

from switchboard.keys import Keys
from switchboard_callsim.call import SimConfig
from switchboard_callsim.script import CallScript
from switchboard_control.app import create_app
from switchboard_control.settings import ControlSettings
from switchboard_edge.server import EdgeServer
from switchboard_edge.settings import EdgeSettings
from switchboard_emulator.config import EmulatorConfig
from switchboard_emulator.server import EmulatorServer
from switchboard_worker.settings import WorkerSettings
from switchboard_worker.worker import Worker

EMULATOR_KEY = "component-deepgram-key"
API_TOKEN = "component-control-token-0123"
CONTROL_BASE = "http://control.test"  # the app's address on httpx's ASGI transport (no socket)
# The end-to-end tests' fast emulator (tests/system.py): short utterances, replies and thinking.
FAST_EMULATOR: dict[str, Any] = {"eou_ms": 300, "think_ms": 50, "reply_ms": 600}
# Every service here shares one event loop with the simulator and the test, so the load an edge
# or a worker measures (CPU, loop lag) is the whole test process's: don't let it refuse calls.
UNLOADED = 10.0


@dataclass
class InProcess:
    redis_url: str
    prefix: str
    workers: int = 1
    capacity: int = 15
    auth_token: str | None = None  # Twilio's: signatures (edge and /twiml) and stream tokens
    emulator_config: dict[str, Any] = field(default_factory=dict)
    edge_config: dict[str, Any] = field(default_factory=dict)
    worker_config: dict[str, Any] = field(default_factory=dict)
    control_config: dict[str, Any] = field(default_factory=dict)

    emulator: EmulatorServer = field(init=False)
    edge: EdgeServer = field(init=False)
    worker_list: list[Worker] = field(init=False, default_factory=list)
    app: FastAPI = field(init=False)
    api: httpx.AsyncClient = field(init=False)
    redis: redis_async.Redis = field(init=False)
    _lifespan: AbstractAsyncContextManager[None] | None = field(init=False, default=None)

    # --- life ----------------------------------------------------------------------------------
    async def __aenter__(self) -> InProcess:
        self.redis = redis_async.Redis.from_url(self.redis_url)
        try:
            self.emulator = EmulatorServer(EmulatorConfig(host="127.0.0.1", port=0, api_key=SecretStr(EMULATOR_KEY),
                                                          **{**FAST_EMULATOR, **self.emulator_config}))
            await self.emulator.start()
            self.edge = await EdgeServer(self.edge_settings()).__aenter__()
            for n in range(self.workers):
                await self.add_worker(f"w{n + 1}")
            self.app = create_app(self.control_settings())
            self._lifespan = self.app.router.lifespan_context(self.app)
            await self._lifespan.__aenter__()
            self.api = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=CONTROL_BASE,
                                         headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=15)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Newest first: control, workers (a drain each), edge, emulator."""
        if hasattr(self, "api"):
            await self.api.aclose()
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)
        for worker in reversed(self.worker_list):
            await self.stop_worker(worker)
        if hasattr(self, "edge"):
            await self.edge.shutdown()
        if hasattr(self, "emulator"):
            await self.emulator.close()
        await self.redis.aclose()

    def edge_settings(self) -> EdgeSettings:
        signed: dict[str, Any] = ({"twilio_auth_token": SecretStr(self.auth_token)} if self.auth_token
                                  else {"edge_insecure_no_signature": True})
        return EdgeSettings(_env_file=None, redis_url=self.redis_url, key_prefix=self.prefix,  # type: ignore[call-arg]
                            edge_id=f"{self.prefix}edge", edge_host="127.0.0.1", edge_port=0,
                            metrics_host="127.0.0.1", metrics_port=0, edge_load_threshold=UNLOADED,
                            **{**signed, **self.edge_config})

    def worker_settings(self, worker_id: str, **overrides: Any) -> WorkerSettings:
        return WorkerSettings(_env_file=None, redis_url=self.redis_url, key_prefix=self.prefix,  # type: ignore[call-arg]
                              worker_id=f"{self.prefix}{worker_id}", metrics_host="127.0.0.1", metrics_port=0,
                              deepgram_agent_url=self.emulator.url, deepgram_api_key=SecretStr(EMULATOR_KEY),
                              worker_capacity=self.capacity, worker_load_threshold=UNLOADED,
                              **{**self.worker_config, **overrides})

    def control_settings(self) -> ControlSettings:
        signed: dict[str, Any] = ({"twilio_auth_token": SecretStr(self.auth_token)} if self.auth_token
                                  else {"control_insecure_twiml": True})
        config = {"edge_public_url": self.edge_url, "command_ack_timeout_s": 3, **signed, **self.control_config}
        return ControlSettings(_env_file=None, redis_url=self.redis_url, key_prefix=self.prefix,  # type: ignore[call-arg]
                               control_api_token=SecretStr(API_TOKEN), **config)

    async def add_worker(self, worker_id: str, **overrides: Any) -> Worker:
        worker = await Worker(self.worker_settings(worker_id, **overrides)).__aenter__()
        self.worker_list.append(worker)
        return worker

    async def stop_worker(self, worker: Worker) -> None:
        """What SIGTERM does: stop claiming, hand the calls over, close."""
        if worker in self.worker_list:
            self.worker_list.remove(worker)
            await worker.drain()

    # --- addresses -------------------------------------------------------------------------------
    @property
    def edge_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge.port}/twilio"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    def twilio_client(self) -> httpx.AsyncClient:
        """What the simulator fetches TwiML with, as Twilio would: the control app at CONTROL_BASE
        (through the ASGI transport), every other URL (the emulator's checks) over loopback."""
        return httpx.AsyncClient(mounts={CONTROL_BASE: httpx.ASGITransport(app=self.app)}, timeout=15)

    def sim(self, **script: Any) -> SimConfig:
        """A simulated call on this edge whose agent audio and caller audio are checked byte for byte."""
        return SimConfig(url=self.edge_url, emulator_url=self.emulator.http_url,
                         script=CallScript(**{"lead_ms": 300, **script}))

    # --- observing --------------------------------------------------------------------------------
    async def events(self, stream_sid: str) -> list[dict[str, Any]]:
        return [orjson.loads(f[b"p"]) for _, f in await self.redis.xrange(self.keys.events(stream_sid))]

    async def call_record(self, stream_sid: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.call(stream_sid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def wait_call_ended(self, stream_sid: str, timeout: float = 15) -> dict[str, str]:
        record: dict[str, str] = {}

        async def ended() -> bool:
            nonlocal record
            record = await self.call_record(stream_sid)
            return record.get("state") == "ended"

        await until(ended, timeout, f"call {stream_sid} to end")
        return record

    def emulator_sessions(self, call_sid: str) -> list[dict[str, Any]]:
        return [record.to_json() for record in self.emulator.registry.find(tag=f"callsid:{call_sid}")]

    def control_messages(self, call_sid: str, kind: str) -> list[dict[str, Any]]:
        """What Deepgram (the emulator) received of one kind, e.g. "UpdatePrompt", over the call's sessions."""
        return [m["body"] for s in self.emulator_sessions(call_sid) for m in s["control_messages"] if m["type"] == kind]


def metric(name: str, **labels: str) -> float:
    """A counter or gauge of this process (every in-process service shares the default registry)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `predicate` (sync or async) until it holds; the services run in this loop meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if asyncio.iscoroutine(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
