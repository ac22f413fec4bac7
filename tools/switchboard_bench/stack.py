"""The two systems under test, each started fresh per level through `switchboard_dev.stack`:

- `SwitchboardStack`: private redis-server, emulator, edge, N agent workers;
- `RelayStack`: emulator and the single-process direct relay (no Redis).

The emulator runs wrapped (`switchboard_bench.emurun`) so that it dumps its pooled caller
transit times on SIGTERM. Each process is known by role (`redis`, `edge`, `worker`, `relay`,
`emulator`) so the sampler can split CPU and memory into system, emulator and simulator.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from switchboard_dev import procs
from switchboard_dev.stack import Proc, Stack

__all__ = ["SYSTEM_ROLES", "Proc", "RelayStack", "SwitchboardStack", "worker_capacity"]

EMULATOR_KEY = "bench-deepgram-key"
SYSTEM_ROLES = ("redis", "edge", "worker", "relay")
QUIET = {"LOG_LEVEL": "WARNING"}


class _BenchStack(Stack):
    """A `Stack` whose emulator dumps its measurements; `stop()` returns them."""

    def __init__(self, log_dir: Path, emulator_args: tuple[str, ...] = (), **options: Any) -> None:
        self._dump = Path(tempfile.mkstemp(prefix="sb-bench-emu-", suffix=".json")[1])
        command = (sys.executable, "-m", "switchboard_bench.emurun", "--dump", str(self._dump),
                   "--log-level", "WARNING")
        super().__init__(log_dir=log_dir, env=dict(QUIET), deepgram_api_key=EMULATOR_KEY,
                         emulator_args=emulator_args, emulator_command=command, start_wait_s=60, **options)

    @property
    def procs(self) -> list[Proc]:
        return self.processes

    def stop(self) -> dict[str, Any] | None:  # type: ignore[override]
        """Stop everything (workers first: they drain into the others); the emulator's dump, if any."""
        super().stop()
        try:
            return orjson.loads(self._dump.read_bytes()) if self._dump.stat().st_size else None
        except (OSError, ValueError):
            return None
        finally:
            self._dump.unlink(missing_ok=True)


class SwitchboardStack(_BenchStack):
    def __init__(self, log_dir: Path, emulator_args: tuple[str, ...] = (), *, workers: int = 2, capacity: int = 50,
                 worker_env: dict[str, str] | None = None, edge_env: dict[str, str] | None = None,
                 control_env: dict[str, str] | None = None, cluster_masters: int = 0) -> None:
        cluster = {"REDIS_CLUSTER": "true"} if cluster_masters else {}
        super().__init__(log_dir, emulator_args, workers=workers, capacity=capacity, worker_id_format="bench-w{n}",
                         worker_env={**cluster, **(worker_env or {})}, edge_env={**cluster, **(edge_env or {})},
                         control=control_env is not None, control_env={**cluster, **(control_env or {})})
        self._cluster_masters = cluster_masters
        self._cluster: procs.RedisClusterServers | None = None

    def start_redis(self) -> None:
        if not self._cluster_masters:
            super().start_redis()
            return
        self._cluster = procs.RedisClusterServers(masters=self._cluster_masters).start()
        self.redis_url = self._cluster.url
        for node in self._cluster.nodes:
            assert node.proc is not None
            self.processes.append(Proc("redis", f"redis-{node.port}", node.proc.pid))

    def stop(self) -> dict[str, Any] | None:  # type: ignore[override]
        try:
            return super().stop()
        finally:
            if self._cluster is not None:
                self._cluster.stop()

    @property
    def redis(self) -> procs.RedisServer | None:  # the sampler reads its URL for Redis ops/s (single node only)
        return self.redis_server

    @property
    def url(self) -> str:
        return self.edge_url


class RelayStack(_BenchStack):
    def start(self) -> RelayStack:
        try:
            self.start_emulator()
            self.port = procs.free_port()
            argv = [*procs.console("switchboard-direct-relay"), "--port", str(self.port), "--deepgram-url",
                    self.deepgram_url, "--deepgram-api-key", EMULATOR_KEY, "--log-level", "WARNING"]
            self.run("relay", procs.Service("direct-relay", argv, {}))
            procs.wait_until(lambda: procs.port_open("127.0.0.1", self.port), 30, "the direct relay to listen")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio"


def worker_capacity(level: int, workers: int) -> int:
    """Room for the whole level even if the dispatch spreads it unevenly (claims are first come)."""
    return max(2, math.ceil(level * 1.5 / workers) + 1)
