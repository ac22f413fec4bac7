"""Switchboard against the direct relay at one level: added latency, ratios, and the targets."""

from __future__ import annotations

from typing import Any

from . import latency

# From the issue: added p95 per direction at a level, ≤ this many ms.
ADDED_P95_TARGET_MS = {100: 10.0, 500: 30.0}
CPU_RATIO_TARGET = 1.5
FAILURE_FREE_LEVEL = 500


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else round(a / b, 2)


def compare(sb: dict[str, Any], relay: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"level": sb["level"], "switchboard": sb, "direct_relay": relay}
    if relay is None:
        return out
    added = {d: latency.added(sb[d] or {}, relay[d] or {}) for d in ("caller_to_deepgram_ms", "deepgram_to_caller_ms")}
    out["added_latency_ms"] = added
    out["ratios"] = {
        "cpu_per_call_minute": _ratio(sb["cpu_s_per_call_minute"], relay["cpu_s_per_call_minute"]),
        **{f"{d}_{p}": _ratio((sb[d] or {}).get(p), (relay[d] or {}).get(p))
           for d in ("caller_to_deepgram_ms", "deepgram_to_caller_ms") for p in ("p50", "p95", "p99")},
        "turn_latency_p95": _ratio((sb["turn_latency_ms"] or {}).get("p95"),
                                   (relay["turn_latency_ms"] or {}).get("p95")),
        "barge_in_latency_p95": _ratio((sb["barge_in_latency_ms"] or {}).get("p95"),
                                       (relay["barge_in_latency_ms"] or {}).get("p95")),
    }
    out["targets"] = targets(sb, added, out["ratios"])
    return out


def _clean(run: dict[str, Any]) -> bool:
    exact = run["byte_exact"]
    return (run["calls"]["failed"] == 0 and run["calls"]["completed"] == run["level"]
            and all(exact[k] and exact[k]["false"] == 0 and exact[k]["none"] == 0 for k in exact))


def targets(sb: dict[str, Any], added: dict[str, dict[str, float | None]], ratios: dict[str, Any]) -> dict[str, Any]:
    level = sb["level"]
    result: dict[str, Any] = {}
    if level in ADDED_P95_TARGET_MS:
        limit = ADDED_P95_TARGET_MS[level]
        for d, values in added.items():
            p95 = values["p95"]
            result[f"added_p95_{d}_le_{limit:g}"] = None if p95 is None else p95 <= limit
    if level >= FAILURE_FREE_LEVEL:
        result["no_failures_byte_exact"] = _clean(sb)
    result["cpu_ratio_le_1.5"] = None if ratios["cpu_per_call_minute"] is None else (
        ratios["cpu_per_call_minute"] <= CPU_RATIO_TARGET)
    return result
