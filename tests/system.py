"""A whole Switchboard on this machine for end-to-end tests: emulator, edge, workers.

Real processes, real sockets, the test session's private redis-server; each system gets
its own key prefix so that systems of different test modules never share calls. `System`
is the tests' face of `switchboard_dev.stack.Stack`, the builder the local run and the
benchmark use too: the same processes started the same way, with test defaults (a fast
emulator, 15 calls per worker, a 1.5 s lease, worker ids inside the key prefix).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis as redis_sync

from switchboard.keys import Keys
from switchboard_dev import procs
from switchboard_dev.stack import Stack

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

    def __post_init__(self) -> None:
        literal_prefix = self.prefix.replace("{", "{{").replace("}", "}}")
        self.stack = Stack(log_dir=self.log_dir, key_prefix=self.prefix, redis_url=self.redis_url,
                           deepgram_api_key=EMULATOR_KEY, emulator_args=self.emulator_args,
                           edge_port=self.edge_port, auth_token=self.auth_token, edge_env=self.edge_env,
                           workers=self.workers, capacity=self.capacity, worker_id_format=literal_prefix + "w{n}",
                           worker_env={"LEASE_MS": "1500", **self.worker_env}, stop_timeout_s=15)

    def start(self) -> System:
        self.stack.start()
        self.edge_port = self.stack.edge_port
        return self

    def add_worker(self, worker_id: str, **env: str) -> procs.Service:
        return self.stack.add_worker(f"{self.prefix}{worker_id}", **env)

    def add_control(self, *, api_token: str = "t" * 24, auth_token: str | None = None,
                    edge_public_url: str | None = None, **env: str) -> tuple[procs.Service, int]:
        """One more control API on a free loopback port, stopped with the system: (service, port).

        Unsigned /twiml unless `auth_token` (Twilio's) is given; streams go to this system's edge
        unless `edge_public_url` says otherwise; `env` adds or overrides variables.
        """
        port = procs.free_port()
        service = procs.control(self.redis_url, port, api_token=api_token, auth_token=auth_token,
                                edge_public_url=edge_public_url or self.edge_url, KEY_PREFIX=self.prefix, **env)
        return self.stack.run("control", service), port

    def _run(self, service: procs.Service) -> procs.Service:
        return self.stack.run("extra", service)

    def stop(self) -> None:
        self.stack.stop()

    # --- the stack's processes and addresses ------------------------------------------------
    @property
    def services(self) -> list[procs.Service]:
        return self.stack.services

    @property
    def worker_services(self) -> list[procs.Service]:
        return self.stack.worker_services

    @property
    def emulator(self) -> procs.Service | None:
        return self.stack.emulator

    @property
    def edge(self) -> procs.Service | None:
        return self.stack.edge

    @property
    def emulator_port(self) -> int:
        return self.stack.emulator_port

    @property
    def edge_metrics(self) -> int:
        return self.stack.edge_metrics

    @property
    def deepgram_url(self) -> str:
        return self.stack.deepgram_url

    @property
    def emulator_http(self) -> str:
        return self.stack.emulator_http

    @property
    def edge_url(self) -> str:
        return self.stack.edge_url

    @property
    def keys(self) -> Keys:
        return self.stack.keys

    # --- observing ---------------------------------------------------------------------------
    def redis(self) -> redis_sync.Redis:
        return self.stack.client()

    def events(self, stream_sid: str) -> list[dict]:
        return self.stack.events(stream_sid)

    def call_record(self, stream_sid: str) -> dict[str, str]:
        return self.stack.call_record(stream_sid)

    def wait_call_ended(self, stream_sid: str, timeout: float = 15) -> dict[str, str]:
        procs.wait_until(lambda: self.call_record(stream_sid).get("state") == "ended", timeout,
                         f"call {stream_sid} to end")
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


def wait_for(predicate, timeout: float, what: str) -> None:
    procs.wait_until(predicate, timeout, what)



class TcpBalancer:
    """A load balancer in front of several edges: each new connection goes to the first
    backend that accepts it, and lives and dies with that backend's socket."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._server = None

    async def __aenter__(self) -> TcpBalancer:
        import asyncio
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader, writer) -> None:
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

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
