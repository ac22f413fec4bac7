"""Many calls at once: start them on a ramp under a concurrency cap, then aggregate.

`LoadReport.to_dict()` is the machine-readable report (`--json`); `format_table()` is the
human one. Latencies are in milliseconds.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from .call import CallResult, Pacer, SimConfig, run_call
from .twiliomsg import CallIdentity


def percentiles(values_us: list[int], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | int | None]:
    """Nearest-rank percentiles in ms, plus max and count."""
    out: dict[str, float | int | None] = {"count": len(values_us)}
    if not values_us:
        out.update({f"p{p}": None for p in points})
        out["max"] = None
        return out
    ordered = sorted(values_us)
    n = len(ordered)
    for p in points:
        out[f"p{p}"] = round(ordered[max(0, -(-p * n // 100) - 1)] / 1000, 3)
    out["max"] = round(ordered[-1] / 1000, 3)
    return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class LoadReport:
    results: list[CallResult] = field(default_factory=list)
    started: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_send_lag_ms: float = 0.0  # how far the shared 20 ms clock fell behind: simulator overload

    @property
    def completed(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    def _verdicts(self, attr: str) -> dict[str, int]:
        values = [getattr(r, attr) for r in self.results]
        return {"true": values.count(True), "false": values.count(False), "none": values.count(None)}

    def to_dict(self) -> dict[str, Any]:
        rs = self.results
        warnings: Counter[int] = Counter()
        for r in rs:
            warnings.update(r.warnings)
        return {
            "calls": {
                "started": self.started,
                "completed": self.completed,
                "failed": self.failed,
                "failure_reasons": dict(Counter(r.failure for r in rs if r.failure)),
            },
            "turn_latency_ms": percentiles([v for r in rs for v in r.turn_latencies_us]),
            "barge_in_latency_ms": {
                **percentiles([v for r in rs for v in r.barge_in_latencies_us], (50, 95)),
                "missed": sum(r.barge_in_missed for r in rs),
            },
            "agent_to_caller_transit_ms": percentiles([v for r in rs for v in r.transit_us]),
            "byte_exact_out": self._verdicts("byte_exact_out"),
            "byte_exact_in": self._verdicts("byte_exact_in"),
            "protocol_warnings": {str(code): n for code, n in sorted(warnings.items())},
            "marks_echoed": sum(r.marks_echoed for r in rs),
            "clears": sum(r.clears for r in rs),
            "max_send_lag_ms": round(self.max_send_lag_ms, 3),
            "sim_cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "calls_detail": [
                {
                    "call_sid": r.call_sid,
                    "stream_sid": r.stream_sid,
                    "streams": r.streams,
                    "redirects": r.redirects,
                    "says": r.says,
                    "paused_s": r.paused_s,
                    "twiml_hangup": r.twiml_hangup,
                    "failure": r.failure,
                    "turns_completed": r.turns_completed,
                    "byte_exact_out": r.byte_exact_out,
                    "out_reasons": r.out_reasons,
                    "byte_exact_in": r.byte_exact_in,
                    "in_reasons": r.in_reasons,
                    "warning_reasons": r.warning_reasons,
                    "sent_audio_bytes": r.sent_audio_bytes,
                    "received_audio_bytes": r.received_audio_bytes,
                }
                for r in rs
            ],
        }

    def format_table(self) -> str:
        d = self.to_dict()
        c = d["calls"]
        lines = [f"calls      started {c['started']}  completed {c['completed']}  failed {c['failed']}"]
        lines += [f"  failed: {n} × {reason}" for reason, n in c["failure_reasons"].items()]

        def row(name: str, stats: dict[str, Any], keys: tuple[str, ...]) -> str:
            cells = "  ".join(f"{k} {'-' if stats[k] is None else stats[k]}" for k in keys)
            return f"{name:<22} n={stats['count']:<7} {cells}"

        lines.append(row("turn latency ms", d["turn_latency_ms"], ("p50", "p95", "p99", "max")))
        barge = d["barge_in_latency_ms"]
        lines.append(row("barge-in latency ms", barge, ("p50", "p95", "max")) + f"  missed {barge['missed']}")
        lines.append(row("agent→caller ms", d["agent_to_caller_transit_ms"], ("p50", "p95", "p99", "max")))
        for key in ("byte_exact_out", "byte_exact_in"):
            v = d[key]
            lines.append(f"{key:<22} ok {v['true']}  mismatch {v['false']}  unchecked {v['none']}")
        warn = "  ".join(f"{code}×{n}" for code, n in d["protocol_warnings"].items()) or "none"
        lines.append(f"{'protocol warnings':<22} {warn}")
        lines.append(
            f"{'simulator':<22} cpu {d['sim_cpu_s']} s  wall {d['wall_s']} s  max send lag {d['max_send_lag_ms']} ms"
        )
        return "\n".join(lines)


async def run_load(config: SimConfig) -> LoadReport:
    loop = asyncio.get_running_loop()
    n = config.calls
    idents = list(config.identities) or [CallIdentity.random(dict(config.params)) for _ in range(n)]
    n = len(idents)
    gate = asyncio.Semaphore(config.concurrency or n)
    report = LoadReport()
    cpu0, t0 = _cpu_s(), loop.time()

    async def one(i: int, ident: CallIdentity, http: httpx.AsyncClient | None, pacer: Pacer) -> None:
        delay = t0 + (config.ramp_ms / 1000) * i / max(1, n) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            report.started += 1
            report.results.append(await run_call(config, ident, http, pacer))

    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=5.0, limits=limits) as http, Pacer(config.phase) as pacer:
        async with asyncio.TaskGroup() as tg:
            for i, ident in enumerate(idents):
                tg.create_task(one(i, ident, http if config.emulator_url else None, pacer))
        report.max_send_lag_ms = pacer.max_lag_ms
    report.wall_s = loop.time() - t0
    report.cpu_s = _cpu_s() - cpu0
    return report
