"""What the processes cost while the load is steady: CPU (user+sys deltas), RSS, Redis commands.

A `Window` takes a snapshot at its start and end (CPU times, Redis `total_commands_processed`,
the machine's CPU times) and samples RSS, live sessions and Redis' instantaneous ops/s in
between. Everything is per process and per role, so the system's cost is never mixed with
the simulator's or the emulator's, and the machine's other load is visible as `other`.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
import psutil
import redis as redis_sync

from .stack import SYSTEM_ROLES, Proc

SATURATED_CORE_PCT = 85.0  # a single-threaded process above this is the bottleneck
SATURATED_MACHINE_PCT = 90.0  # every core busy: run-queue delay lands in every latency figure


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def rss_by_proc(processes: list[Proc]) -> dict[str, int]:
    return {p.name: _rss(psutil.Process(p.pid)) for p in processes}


def emulator_live_sessions(emulator_http: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{emulator_http}/_emulator/healthz", timeout=2) as resp:
            return int(orjson.loads(resp.read())["active_sessions"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class Window:
    processes: list[Proc]
    emulator_http: str
    redis_url: str | None = None
    _ps: dict[str, psutil.Process] = field(default_factory=dict)
    _cpu0: dict[str, float] = field(default_factory=dict)
    _cpu1: dict[str, float] = field(default_factory=dict)
    _rss_max: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _rss_end: dict[str, int] = field(default_factory=dict)
    _live: list[int] = field(default_factory=list)
    _ops_samples: list[int] = field(default_factory=list)
    _machine0: Any = None
    _machine1: Any = None
    _cmds0: int = 0
    _cmds1: int = 0
    _t0: float = 0.0
    _t1: float = 0.0

    def __post_init__(self) -> None:
        self._ps = {p.name: psutil.Process(p.pid) for p in self.processes}
        self._redis = redis_sync.Redis.from_url(self.redis_url) if self.redis_url else None

    def _commands(self) -> int:
        return int(self._redis.info("stats")["total_commands_processed"]) if self._redis else 0

    def begin(self) -> None:
        self._machine0 = psutil.cpu_times()
        self._cmds0 = self._commands()
        self._t0 = time.monotonic()
        self._cpu0 = {name: _cpu_s(ps) for name, ps in self._ps.items()}

    def sample(self) -> None:
        for name, ps in self._ps.items():
            self._rss_max[name] = max(self._rss_max[name], _rss(ps))
        live = emulator_live_sessions(self.emulator_http)
        if live is not None:
            self._live.append(live)
        if self._redis is not None:
            self._ops_samples.append(int(self._redis.info("stats")["instantaneous_ops_per_sec"]))

    def end(self) -> None:
        self._cpu1 = {name: _cpu_s(ps) for name, ps in self._ps.items()}
        self._t1 = time.monotonic()
        self._cmds1 = self._commands()
        self._machine1 = psutil.cpu_times()
        self._rss_end = {name: _rss(ps) for name, ps in self._ps.items()}
        if self._redis is not None:
            self._redis.close()

    def result(self, extra: dict[str, tuple[str, float]] | None = None) -> dict[str, Any]:
        """`extra`: processes measured elsewhere (the simulator), name → (role, CPU seconds in the window)."""
        span = self._t1 - self._t0
        per_proc: dict[str, dict[str, Any]] = {}
        for p in self.processes:
            cpu = self._cpu1[p.name] - self._cpu0[p.name]
            per_proc[p.name] = {
                "role": p.role,
                "pid": p.pid,
                "cpu_s": round(cpu, 3),
                "core_pct": round(100 * cpu / span, 1),
                "rss_mb_end": round(self._rss_end[p.name] / 2**20, 1),
                "rss_mb_max": round(self._rss_max.get(p.name, 0) / 2**20, 1),
            }
        for name, (role, cpu) in (extra or {}).items():
            per_proc[name] = {"role": role, "cpu_s": round(cpu, 3), "core_pct": round(100 * cpu / span, 1)}
        by_role: dict[str, float] = defaultdict(float)
        for row in per_proc.values():
            by_role[row["role"]] += row["cpu_s"]
        m0, m1 = self._machine0, self._machine1
        busy = (sum(m1) - m1.idle - m1.iowait) - (sum(m0) - m0.idle - m0.iowait)
        ours = sum(row["cpu_s"] for row in per_proc.values())
        ncpu = psutil.cpu_count() or 1
        live = self._live or [0]
        return {
            "seconds": round(span, 3),
            "live_calls": {"min": min(live), "mean": round(sum(live) / len(live), 1), "max": max(live),
                           "samples": len(self._live)},
            "processes": per_proc,
            "cpu_s_by_role": {k: round(v, 3) for k, v in by_role.items()},
            "system_cpu_s": round(sum(v for k, v in by_role.items() if k in SYSTEM_ROLES), 3),
            "machine": {
                "cores": ncpu,
                "busy_pct": round(100 * busy / (span * ncpu), 1),
                # CPU the machine spent on anything but this benchmark's processes: other people's work.
                "other_pct": round(100 * max(0.0, busy - ours) / (span * ncpu), 1),
            },
            "saturated": sorted(name for name, row in per_proc.items() if row["core_pct"] >= SATURATED_CORE_PCT)
            + (["machine"] if 100 * busy / (span * ncpu) >= SATURATED_MACHINE_PCT else []),
            "redis": None if self.redis_url is None else {
                "ops_per_s": round((self._cmds1 - self._cmds0) / span, 1),
                "instantaneous_ops_per_s": {
                    "mean": round(sum(self._ops_samples) / max(1, len(self._ops_samples)), 1),
                    "max": max(self._ops_samples, default=0),
                },
            },
        }
