"""The fleet as the console shows it: workers (capacity, calls, draining, last heartbeat),
edges (from the live calls they hold), admission (free slots, callers on hold) and Redis."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from switchboard import capacity

from ..deps import State


async def snapshot(state: State, rows: list[dict[str, Any]]) -> dict[str, Any]:
    redis, keys = state.redis, state.keys
    started = time.perf_counter()
    info = await redis.info()
    redis_ms = round((time.perf_counter() - started) * 1000, 2)
    view, _held = await capacity.read(redis, keys)
    fleet = await redis.hgetall(keys.admission_fleet())
    loads = sorted((load for wid, value in fleet.items() if (load := capacity.parse_worker(wid, value)) is not None),
                   key=lambda load: load.worker_id)
    pipe = redis.pipeline(transaction=False)
    for load in loads:
        pipe.hgetall(keys.worker(load.worker_id))
    beats = await pipe.execute() if loads else []
    by_worker = Counter(row.get("worker") for row in rows if row.get("worker"))
    by_edge = Counter(row.get("edge") for row in rows if row.get("edge"))
    workers = []
    for load, beat in zip(loads, beats):
        ts = beat.get(b"ts") if beat else None
        workers.append({
            "id": load.worker_id, "capacity": load.capacity, "live": load.live, "draining": load.draining,
            "free": load.free, "alive": bool(beat), "calls_in_table": by_worker.get(load.worker_id, 0),
            "last_seen_s": round(time.time() - float(ts), 1) if ts else None,
        })
    return {
        "workers": workers,
        "edges": [{"id": edge, "calls": count} for edge, count in sorted(by_edge.items())],
        "admission": {
            "mode": state.settings.control_admission, "free": view.free, "capacity": view.capacity,
            "claimed": view.claimed, "unclaimed": view.unclaimed, "reserved": view.reserved,
            "on_hold": await redis.zcard(keys.admission_queue()),
        },
        "redis": {
            "ok": True, "ping_ms": redis_ms, "version": info.get("redis_version"),
            "used_memory_human": info.get("used_memory_human"), "connected_clients": info.get("connected_clients"),
            "uptime_s": info.get("uptime_in_seconds"),
        },
        "live_calls": len(rows),
    }
