"""The two systems under test, each started fresh per level from `switchboard_dev.procs`:

- `SwitchboardStack`: private redis-server, emulator, edge, N agent workers;
- `RelayStack`: emulator and the single-process direct relay (no Redis).

Each knows its processes by role (`redis`, `edge`, `worker`, `relay`, `emulator`) so the
sampler can split CPU and memory into system, emulator and simulator.
"""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from switchboard_dev import procs

EMULATOR_KEY = "bench-deepgram-key"
SYSTEM_ROLES = ("redis", "edge", "worker", "relay")


@dataclass(frozen=True, slots=True)
class Proc:
    role: str
    name: str
    pid: int


def _emulator(port: int, emulator_args: tuple[str, ...], dump: Path) -> procs.Service:
    argv = [sys.executable, "-m", "switchboard_bench.emurun", "--dump", str(dump), "--host", "127.0.0.1",
            "--port", str(port), "--api-key", EMULATOR_KEY, "--log-level", "WARNING", *emulator_args]
    return procs.Service(f"emulator-{port}", argv, {}, health_url=f"http://127.0.0.1:{port}/_emulator/healthz")


@dataclass
class _Stack:
    log_dir: Path
    emulator_args: tuple[str, ...] = ()
    services: list[procs.Service] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def _run(self, role: str, service: procs.Service) -> procs.Service:
        service.start(self.log_dir, wait_s=60)
        assert service.proc is not None
        self.services.append(service)
        self.procs.append(Proc(role, service.name, service.proc.pid))
        return service

    def _start_emulator(self) -> None:
        self.emulator_port = procs.free_port()
        self._dump = Path(tempfile.mkstemp(prefix="sb-bench-emu-", suffix=".json")[1])
        self._run("emulator", _emulator(self.emulator_port, self.emulator_args, self._dump))

    @property
    def deepgram_url(self) -> str:
        return f"ws://127.0.0.1:{self.emulator_port}/v1/agent/converse"

    @property
    def emulator_http(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def stop(self) -> dict[str, Any] | None:
        """Stop everything (workers first: they drain into the others); the emulator's dump, if any."""
        for service in reversed(self.services):
            service.stop(timeout=30)
        try:
            return orjson.loads(self._dump.read_bytes()) if self._dump.stat().st_size else None
        except (OSError, ValueError):
            return None
        finally:
            self._dump.unlink(missing_ok=True)


@dataclass
class SwitchboardStack(_Stack):
    workers: int = 2
    capacity: int = 50
    worker_env: dict[str, str] = field(default_factory=dict)
    edge_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> "SwitchboardStack":
        self.redis = procs.RedisServer()
        self.redis.start()
        assert self.redis.proc is not None
        self.procs.append(Proc("redis", "redis-server", self.redis.proc.pid))
        self._start_emulator()
        self.edge_port, self.edge_metrics = procs.free_port(), procs.free_port()
        self._run("edge", procs.edge(self.redis.url, self.edge_port, self.edge_metrics, LOG_LEVEL="WARNING",
                                     **self.edge_env))
        self.worker_metrics: list[int] = []
        for n in range(self.workers):
            port = procs.free_port()
            self.worker_metrics.append(port)
            self._run("worker", procs.worker(self.redis.url, port, self.deepgram_url, EMULATOR_KEY,
                                             worker_id=f"bench-w{n + 1}", capacity=self.capacity,
                                             LOG_LEVEL="WARNING", **self.worker_env))
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/twilio"

    def stop(self) -> dict[str, Any] | None:
        try:
            return super().stop()
        finally:
            self.redis.stop()


@dataclass
class RelayStack(_Stack):
    def start(self) -> "RelayStack":
        self._start_emulator()
        self.port = procs.free_port()
        argv = [*procs.console("switchboard-direct-relay"), "--port", str(self.port), "--deepgram-url",
                self.deepgram_url, "--deepgram-api-key", EMULATOR_KEY, "--log-level", "WARNING"]
        service = procs.Service("direct-relay", argv, {})
        self._run("relay", service)
        procs.wait_until(lambda: procs.port_open("127.0.0.1", self.port), 30, "the direct relay to listen")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio"


def worker_capacity(level: int, workers: int) -> int:
    """Room for the whole level even if the dispatch spreads it unevenly (claims are first come)."""
    return max(2, math.ceil(level * 1.5 / workers) + 1)
