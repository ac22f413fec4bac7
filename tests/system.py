"""A whole Switchboard on this machine for end-to-end tests: emulator, edge, workers.

Real processes, real sockets, the test session's private redis-server; each system gets
its own key prefix so that systems of different test modules never share calls.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis as redis_sync

from switchboard_dev import procs
from switchboard.keys import Keys

EMULATOR_KEY = "test-deepgram-key"
FAST_EMULATOR = ("--eou-ms", "300", "--think-ms", "50", "--reply-ms", "600")


@dataclass
class System:
    redis_url: str
    prefix: str
    log_dir: Path
    workers: int = 2
    capacity: int = 15
    emulator_args: tuple[str, ...] = FAST_EMULATOR
    edge_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    auth_token: str | None = None
    edge_port: int = 0  # 0: any free port; fixed when the stream URL must be known before the edge starts
    services: list[procs.Service] = field(default_factory=list)
    worker_services: list[procs.Service] = field(default_factory=list)

    def start(self) -> "System":
        self.emulator_port = procs.free_port()
        self.emulator = self._run(procs.emulator(self.emulator_port, *self.emulator_args, api_key=EMULATOR_KEY))
        self.edge_port, self.edge_metrics = self.edge_port or procs.free_port(), procs.free_port()
        self.edge = self._run(procs.edge(self.redis_url, self.edge_port, self.edge_metrics, auth_token=self.auth_token,
                                         KEY_PREFIX=self.prefix, **self.edge_env))
        for n in range(self.workers):
            self.add_worker(f"w{n + 1}")
        return self

    def add_worker(self, worker_id: str, **env: str) -> procs.Service:
        service = procs.worker(self.redis_url, procs.free_port(), self.deepgram_url, EMULATOR_KEY,
                               worker_id=f"{self.prefix}{worker_id}", capacity=self.capacity, KEY_PREFIX=self.prefix,
                               LEASE_MS="1500", **{**self.worker_env, **env})
        self.worker_services.append(self._run(service))
        return service

    def _run(self, service: procs.Service) -> procs.Service:
        service.start(self.log_dir)
        self.services.append(service)
        return service

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=15)

    # --- addresses ---------------------------------------------------------------------------
    @property
    def deepgram_url(self) -> str:
        return f"ws://127.0.0.1:{self.emulator_port}/v1/agent/converse"

    @property
    def emulator_http(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def edge_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/twilio"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    # --- observing ---------------------------------------------------------------------------
    def redis(self) -> redis_sync.Redis:
        if self.edge_env.get("REDIS_CLUSTER") == "true":
            from redis.cluster import RedisCluster
            return RedisCluster.from_url(self.redis_url)  # type: ignore[return-value]
        return redis_sync.Redis.from_url(self.redis_url)

    def events(self, stream_sid: str) -> list[dict]:
        with self.redis() as client:
            return [orjson.loads(f[b"p"]) for _, f in client.xrange(self.keys.events(stream_sid))]

    def call_record(self, stream_sid: str) -> dict[str, str]:
        with self.redis() as client:
            return {k.decode(): v.decode() for k, v in client.hgetall(self.keys.call(stream_sid)).items()}

    def wait_call_ended(self, stream_sid: str, timeout: float = 15) -> dict[str, str]:
        procs.wait_until(lambda: self.call_record(stream_sid).get("state") == "ended", timeout, f"call {stream_sid} to end")
        return self.call_record(stream_sid)

    def emulator_sessions(self, call_sid: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.emulator_http}/_emulator/sessions?tag=callsid:{call_sid}") as resp:
            return orjson.loads(resp.read())

    def emulator_faults(self, **faults: object) -> dict:
        query = "&".join(f"{k}={v}" for k, v in faults.items())
        with urllib.request.urlopen(f"{self.emulator_http}/_emulator/faults?{query}") as resp:
            return orjson.loads(resp.read())

    def metric(self, metrics_port: int, name: str, labels: str = "") -> float:
        return scrape(metrics_port, name, labels)


def scrape(metrics_port: int, name: str, labels: str = "") -> float:
    """Sum of a metric's samples whose label text contains `labels`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    procs.wait_until(predicate, timeout, what)



class TcpBalancer:
    """A load balancer in front of several edges: each new connection goes to the first
    backend that accepts it, and lives and dies with that backend's socket."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._server = None

    async def __aenter__(self) -> "TcpBalancer":
        import asyncio
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader, writer) -> None:  # noqa: ANN001
        import asyncio
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(src, dst) -> None:  # noqa: ANN001
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
