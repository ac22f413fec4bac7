"""One measurement: a fresh system, a timed call plan in a simulator process, a steady window.

Timeline of a run at level N (seconds from the simulator's start):
    0 ── ramp ──▶ all N calls placed ── settle ──▶ [ window: duration ] ── calls hang up ──▶
Every call is scripted to last at least ramp + settle + duration + margin, so the window
sees all N calls live (the emulator's live-session count is sampled to prove it).
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import latency
from .profile import Profiler
from .sampler import Window, rss_by_proc
from .stack import Proc, RelayStack, SwitchboardStack, worker_capacity

SAMPLE_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    """The conversation every call holds, and the emulator timings it is built around."""

    duration_s: float = 30.0
    ramp_s: float | None = None  # default: 20 ms per call, at least 1 s
    settle_s: float = 3.0
    barge_in_share: float = 0.25
    utterance_ms: int = 1200
    lead_ms: int = 1000
    gap_ms: int = 300
    eou_ms: int = 600
    think_ms: int = 150
    reply_ms: int = 1500
    barge_in_after_ms: int = 400
    # Real calls start at random instants, so their frames are spread over the 20 ms period;
    # "aligned" sends every call's frame in the same millisecond (one Redis round trip for all).
    phase: str = "random"
    agent_chunk_ms: int = 100  # agent audio per Deepgram binary message (the emulator's --chunk-ms)

    def ramp(self, level: int) -> float:
        return self.ramp_s if self.ramp_s is not None else max(1.0, level * 0.02)

    def call_s(self, level: int) -> float:
        return self.ramp(level) + self.settle_s + self.duration_s + 1.0

    @property
    def emulator_args(self) -> tuple[str, ...]:
        return ("--eou-ms", str(self.eou_ms), "--think-ms", str(self.think_ms), "--reply-ms", str(self.reply_ms),
                "--chunk-ms", str(self.agent_chunk_ms))

    def _turns(self, level: int, barge_in: bool) -> int:
        reply_wait = self.utterance_ms + self.eou_ms + self.think_ms
        full = reply_wait + self.reply_ms + 200 + self.gap_ms  # 200 = the simulator's reply_quiet_ms
        cut = reply_wait + self.barge_in_after_ms
        budget = self.call_s(level) * 1000 - self.lead_ms - full  # the last reply always plays out
        return 1 + max(0, math.ceil(budget / (cut if barge_in else full)))

    def sim_plan(self, url: str, emulator_http: str, level: int) -> dict[str, Any]:
        barge = round(level * self.barge_in_share) if level > 1 else 0
        groups = []
        for name, calls, barge_in in (("talk", level - barge, False), ("barge_in", barge, True)):
            script = {"turns": self._turns(level, barge_in), "utterance_ms": self.utterance_ms,
                      "lead_ms": self.lead_ms, "gap_ms": self.gap_ms, "barge_in": barge_in,
                      "barge_in_after_ms": self.barge_in_after_ms,
                      "reply_timeout_ms": 8000 + self.eou_ms + self.think_ms}
            # Both groups share the ramp so the load rises evenly.
            groups.append({"name": name, "calls": calls, "ramp_ms": int(self.ramp(level) * 1000), "script": script})
        return {"url": url, "emulator_url": emulator_http, "groups": groups, "phase": self.phase}


def _wait_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_level(system: str, level: int, plan: Plan, *, workers: int, log_dir: Path,
              worker_env: dict[str, str] | None = None, edge_env: dict[str, str] | None = None,
              profiler: Profiler | None = None, cluster_masters: int = 0) -> dict[str, Any]:
    """Start `system` ('switchboard' or 'relay'), load it with `level` calls, measure, stop it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if system == "switchboard":
        stack: SwitchboardStack | RelayStack = SwitchboardStack(
            log_dir, plan.emulator_args, workers=workers, capacity=worker_capacity(level, workers),
            worker_env=worker_env or {}, edge_env=edge_env or {}, cluster_masters=cluster_masters)
    else:
        stack = RelayStack(log_dir, plan.emulator_args)
    started = time.monotonic()
    stack.start()
    dump = None
    try:
        time.sleep(1.0)
        idle_rss = rss_by_proc(stack.procs)
        startup_s = time.monotonic() - started
        tmp = Path(tempfile.mkdtemp(prefix="sb-bench-sim-"))
        (tmp / "plan.json").write_bytes(orjson.dumps(plan.sim_plan(stack.url, stack.emulator_http, level)))
        with open(log_dir / "simulator.log", "ab") as sim_log:
            sim = subprocess.Popen([sys.executable, "-m", "switchboard_bench.simrun", str(tmp / "plan.json"),
                                    str(tmp / "report.json")], stdout=sim_log, stderr=sim_log)
        t0 = time.monotonic()
        procs = [*stack.procs, Proc("simulator", "simulator", sim.pid)]
        window = Window(procs, stack.emulator_http, getattr(getattr(stack, "redis", None), "url", None))
        begin = t0 + plan.ramp(level) + plan.settle_s
        _wait_until(begin)
        window.begin()
        if profiler is not None:
            profiler.start(stack)
        while time.monotonic() < begin + plan.duration_s:
            window.sample()
            _wait_until(min(begin + plan.duration_s, time.monotonic() + SAMPLE_EVERY_S))
        window.end()
        measured = window.result()
        profile = profiler.finish() if profiler is not None else None
        try:
            sim.wait(timeout=plan.call_s(level) + 120)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        sim_report = orjson.loads((tmp / "report.json").read_bytes()) if (tmp / "report.json").exists() else None
        metrics = _switchboard_metrics(stack) if isinstance(stack, SwitchboardStack) else None
    finally:
        dump = stack.stop()
    return _summarise(system, level, measured, idle_rss, sim_report, dump, metrics, startup_s, sim.returncode,
                      profile)


def _switchboard_metrics(stack: SwitchboardStack) -> dict[str, Any]:
    edge = [latency.scrape(stack.edge_metrics)]
    workers = [latency.scrape(port) for port in stack.worker_metrics]
    return {
        "edge_agent_audio_transit_ms": latency.prom_histogram(edge, "switchboard_edge_agent_audio_transit_seconds"),
        "worker_caller_audio_transit_ms": latency.prom_histogram(
            workers, "switchboard_worker_caller_audio_transit_seconds"),
        "calls_per_worker": [int(latency.metric_sum([w], "switchboard_worker_claims_total")) for w in workers],
        "edge_redis_errors": latency.metric_sum(edge, "switchboard_edge_redis_errors_total"),
        "worker_redis_errors": latency.metric_sum(workers, "switchboard_worker_redis_errors_total"),
    }


def _summarise(system: str, level: int, measured: dict[str, Any], idle_rss: dict[str, int],
               sim: dict[str, Any] | None, dump: dict[str, Any] | None, metrics: dict[str, Any] | None,
               startup_s: float, sim_rc: int | None, profile: Any) -> dict[str, Any]:
    live = measured["live_calls"]["mean"] or level
    call_minutes = live * measured["seconds"] / 60
    memory: dict[str, Any] = {}
    for name, row in measured["processes"].items():
        if name in idle_rss:
            row["rss_mb_idle"] = round(idle_rss[name] / 2**20, 1)
            role = memory.setdefault(row["role"], {"rss_mb_idle": 0.0, "rss_mb_loaded": 0.0})
            role["rss_mb_idle"] += row["rss_mb_idle"]
            role["rss_mb_loaded"] += row["rss_mb_max"]
    for role in memory.values():
        role["kb_per_call"] = round((role["rss_mb_loaded"] - role["rss_mb_idle"]) * 1024 / level, 1)
        role["rss_mb_idle"], role["rss_mb_loaded"] = round(role["rss_mb_idle"], 1), round(role["rss_mb_loaded"], 1)
    calls = sim["calls"] if sim else {"started": 0, "completed": 0, "failed": level, "failure_reasons":
                                      {"simulator produced no report": level}}
    return {
        "system": system,
        "level": level,
        "startup_s": round(startup_s, 1),
        "calls": calls,
        "simulator_exit": sim_rc,
        "byte_exact": {"agent_to_caller": sim and sim["byte_exact_out"],
                       "caller_to_agent": sim and sim["byte_exact_in"]},
        "caller_to_deepgram_ms": latency.from_histogram(dump),
        "deepgram_to_caller_ms": sim and (sim["agent_to_caller_transit_ms"]
                                          | {"method": "every agent frame, exact (simulator)"}),
        "turn_latency_ms": sim and sim["turn_latency_ms"],
        "barge_in_latency_ms": sim and sim["barge_in_latency_ms"],
        "protocol_warnings": sim and sim["protocol_warnings"],
        "simulator_max_send_lag_ms": sim and sim["max_send_lag_ms"],
        "failed_calls": sim and sim["failed_calls"],
        "cpu_s_per_call_minute": round(measured["system_cpu_s"] / call_minutes, 3) if call_minutes else None,
        "memory": memory,
        "window": measured,
        "internal": metrics,
        "profile": profile,
    }
