"""The one stack builder: redis-server, the Deepgram emulator, the edge, N workers, control.

`switchboard-local` (`./dev run`), the end-to-end tests (`tests/system.py`) and the
benchmark (`switchboard_bench.stack`) all start, address and stop Switchboard through this
class, so the three run the system the same way and a new setting or process is added once.

Every part is optional: a `redis_url` is used as given (else a private redis-server is
started), a `deepgram_url` is used with `deepgram_api_key` (else the bundled emulator is
started), `workers` may be 0, and control is started only when asked for. Each process is
remembered with its role, so the benchmark can split CPU and memory by role.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync

from switchboard.keys import Keys

from . import procs

EMULATOR_KEY = "local-emulator-key"


@dataclass(frozen=True, slots=True)
class Proc:
    role: str
    name: str
    pid: int


@dataclass
class Stack:
    log_dir: Path | None = None
    key_prefix: str = "sb:"
    # Variables every Switchboard service gets (LOG_LEVEL, REDIS_CLUSTER, ...).
    env: dict[str, str] = field(default_factory=dict)
    # Redis: this URL, or (empty) a private redis-server on `redis_port` (0 = any free port).
    redis_url: str = ""
    redis_port: int = 0
    # Deepgram: this URL with `deepgram_api_key`, or (empty) the bundled emulator.
    deepgram_url: str = ""
    deepgram_api_key: str = EMULATOR_KEY
    emulator_port: int = 0
    emulator_args: tuple[str, ...] = ()
    # The emulator's argv before `--host/--port/--api-key` (the benchmark wraps it).
    emulator_command: tuple[str, ...] = ()
    # Edge: a fixed port when the stream URL must be known before it starts (Twilio signs it).
    edge_port: int = 0
    auth_token: str | None = None
    edge_env: dict[str, str] = field(default_factory=dict)
    workers: int = 2
    capacity: int = 50
    worker_id_format: str = "w{n}"
    worker_env: dict[str, str] = field(default_factory=dict)
    control: bool = False
    control_port: int = 0
    control_token: str = ""
    control_env: dict[str, str] = field(default_factory=dict)
    start_wait_s: float = 20
    stop_timeout_s: float = 30

    services: list[procs.Service] = field(default_factory=list)
    worker_services: list[procs.Service] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)
    edge_metrics: int = 0
    worker_metrics: list[int] = field(default_factory=list)
    redis_server: procs.RedisServer | None = None
    emulator: procs.Service | None = None
    edge: procs.Service | None = None
    control_service: procs.Service | None = None

    # --- starting ------------------------------------------------------------------------------
    def start(self) -> Stack:
        """Everything configured, in dependency order; on a failure what did start is stopped."""
        try:
            self.start_redis()
            if not self.deepgram_url:
                self.start_emulator()
            self.start_edge()
            for n in range(self.workers):
                self.add_worker(self.worker_id_format.format(n=n + 1))
            if self.control:
                self.start_control()
        except BaseException:
            self.stop()
            raise
        return self

    def start_redis(self) -> None:
        if self.redis_url:
            return
        self.redis_server = procs.RedisServer(port=self.redis_port or procs.free_port()).start()
        self.redis_url = self.redis_server.url
        assert self.redis_server.proc is not None
        self.processes.append(Proc("redis", "redis-server", self.redis_server.proc.pid))

    def start_emulator(self) -> None:
        self.emulator_port = self.emulator_port or procs.free_port()
        command = list(self.emulator_command) or procs.console("switchboard-deepgram-emulator")
        argv = [*command, "--host", "127.0.0.1", "--port", str(self.emulator_port),
                "--api-key", self.deepgram_api_key, *self.emulator_args]
        self.emulator = self.run("emulator", procs.Service(f"emulator-{self.emulator_port}", argv, {},
                                                           health_url=f"{self.emulator_http}/_emulator/healthz"))
        self.deepgram_url = f"ws://127.0.0.1:{self.emulator_port}/v1/agent/converse"

    def start_edge(self) -> None:
        self.edge_port = self.edge_port or procs.free_port()
        self.edge_metrics = procs.free_port()
        self.edge = self.run("edge", procs.edge(self.redis_url, self.edge_port, self.edge_metrics,
                                                auth_token=self.auth_token, KEY_PREFIX=self.key_prefix,
                                                **{**self.env, **self.edge_env}))

    def add_worker(self, worker_id: str, **env: str) -> procs.Service:
        metrics_port = procs.free_port()
        service = procs.worker(self.redis_url, metrics_port, self.deepgram_url, self.deepgram_api_key,
                               worker_id=worker_id, capacity=self.capacity, KEY_PREFIX=self.key_prefix,
                               **{**self.env, **self.worker_env, **env})
        self.run("worker", service)
        self.worker_services.append(service)
        self.worker_metrics.append(metrics_port)
        return service

    def start_control(self, **env: str) -> procs.Service:
        self.control_port = self.control_port or procs.free_port()
        self.control_token = self.control_token or secrets.token_urlsafe(24)
        service = procs.control(self.redis_url, self.control_port, api_token=self.control_token,
                                auth_token=self.auth_token, edge_public_url=self.edge_url,
                                KEY_PREFIX=self.key_prefix, **{**self.env, **self.control_env, **env})
        self.control_service = self.run("control", service)
        return service

    def run(self, role: str, service: procs.Service) -> procs.Service:
        """Start one more process as part of this stack (stopped with it, newest first)."""
        self.services.append(service)
        service.start(self.log_dir, wait_s=self.start_wait_s)
        assert service.proc is not None
        self.processes.append(Proc(role, service.name, service.proc.pid))
        return service

    def stop(self) -> None:
        """Newest first (control, workers, edge, emulator), then the private redis-server."""
        for service in reversed(self.services):
            service.stop(timeout=self.stop_timeout_s)
        if self.redis_server is not None:
            self.redis_server.stop()

    def kill(self) -> None:
        """Every process at once with SIGKILL: no drain, nothing waited for but their exit."""
        for service in self.services:
            service.kill()
        if self.redis_server is not None:
            self.redis_server.kill()

    def alive(self) -> bool:
        """Every process still running (a health-checked one that exited raises, naming its log)."""
        return all(service.alive() for service in self.services)

    # --- addresses -----------------------------------------------------------------------------
    @property
    def edge_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/twilio"

    @property
    def emulator_http(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def keys(self) -> Keys:
        env = {**self.env, **self.edge_env}
        if env.get("REDIS_CLUSTER") == "true":  # the services' own rule (switchboard.config.keys_for)
            return Keys(self.key_prefix, int(env.get("REDIS_CLUSTER_BUCKETS", "16")))
        return Keys(self.key_prefix)

    # --- observing -----------------------------------------------------------------------------
    def client(self) -> redis_sync.Redis:
        """A blocking Redis client for looking at what the system wrote."""
        if {**self.env, **self.edge_env}.get("REDIS_CLUSTER") == "true":
            from redis.cluster import RedisCluster
            return RedisCluster.from_url(self.redis_url)  # type: ignore[return-value]
        return redis_sync.Redis.from_url(self.redis_url)

    def events(self, stream_sid: str) -> list[dict[str, Any]]:
        with self.client() as client:
            return [orjson.loads(f[b"p"]) for _, f in client.xrange(self.keys.events(stream_sid))]

    def call_record(self, stream_sid: str) -> dict[str, str]:
        with self.client() as client:
            return {k.decode(): v.decode() for k, v in client.hgetall(self.keys.call(stream_sid)).items()}
