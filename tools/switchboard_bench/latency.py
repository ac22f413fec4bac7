"""Latency figures from the two ends of the wire, and the derived "added by Switchboard".

- caller→Deepgram: the emulator's transit of every synthetic caller frame (the simulator's
  send timestamp in the frame vs. the emulator's receive time), pooled over all sessions from
  100 µs histograms (`emurun`), so p50/p95/p99 are over frames, not averaged per call;
- Deepgram→caller: the simulator's transit of every agent frame (the emulator's send
  timestamp in the frame vs. the simulator's receive time), exact;
- added = Switchboard's percentile − the direct relay's at the same level and load.
"""

from __future__ import annotations

import urllib.request
from typing import Any

POINTS = ("p50", "p95", "p99")


def from_histogram(dump: dict[str, Any] | None) -> dict[str, Any]:
    """Nearest-rank percentiles (ms, bucket lower edge as the emulator reports them) of a pooled dump."""
    if not dump:
        return {"count": 0, **dict.fromkeys(POINTS), "max": None, "method": "unavailable"}
    if not dump.get("pooled"):
        return _from_session_summaries(dump["sessions"])
    hist = [(int(b), int(n)) for b, n in dump["hist"]]
    total = sum(n for _, n in hist)
    out: dict[str, Any] = {"count": total}
    for p in POINTS:
        rank = max(1, -(-int(p[1:]) * total // 100))
        seen, value = 0, None
        for bucket, n in hist:
            seen += n
            if seen >= rank:
                value = round(bucket * dump["bucket_us"] / 1000, 3)
                break
        out[p] = value
    out["max"] = round(dump["max_us"] / 1000, 3) if total else None
    out["method"] = f"pooled histogram of every caller frame ({dump['bucket_us']} µs buckets)"
    out["out_of_order_frames"] = sum(s.get("out_of_order", 0) for s in dump["sessions"])
    return out


def _from_session_summaries(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    # Percentiles do not pool: without the histogram, say what these numbers are.
    p50s = sorted(s["p50"] for s in sessions if s.get("p50") is not None)
    p95s = sorted(s["p95"] for s in sessions if s.get("p95") is not None)
    maxes = [s["max"] for s in sessions if s.get("max") is not None]
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None  # noqa: E731
    return {"count": sum(s.get("frames", 0) for s in sessions), "p50": pick(p50s, 0.5), "p95": pick(p95s, 0.5),
            "p99": pick(p95s, 0.95), "max": max(maxes, default=None),
            "method": "per-session summaries: p50 = median of session p50s, p95 = median of session p95s, "
                      "p99 = 95th percentile of session p95s"}


def added(switchboard: dict[str, Any], relay: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for p in (*POINTS, "max"):
        a, b = switchboard.get(p), relay.get(p)
        out[p] = None if a is None or b is None else round(a - b, 3)
    return out


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def metric_sum(texts: list[str], name: str) -> float:
    total = 0.0
    for text in texts:
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
    return total


def prom_histogram(texts: list[str], name: str) -> dict[str, Any]:
    """p50/p95/p99 of a Prometheus histogram summed over instances, as bucket upper bounds (ms)."""
    buckets: dict[float, float] = {}
    for text in texts:
        for line in text.splitlines():
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    out: dict[str, Any] = {"count": int(total)}
    for p in POINTS:
        rank = total * int(p[1:]) / 100
        out[f"{p}_le"] = next((None if b == float("inf") else round(b * 1000, 3) for b, c in ordered if c >= rank),
                              None) if total else None
    return out
