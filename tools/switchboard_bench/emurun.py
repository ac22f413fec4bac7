"""The Deepgram emulator as a benchmark process: the stock server, plus a dump of the pooled
caller-frame transit histogram when it stops.

The emulator's `/_emulator/sessions` reports only per-session p50/p95/max, and percentiles do
not pool. The pooled 100 µs histogram is what gives an honest p95/p99 over every caller frame
of every call, so on SIGTERM this process writes it to `--dump` as JSON. The histogram is
read from `CallerFrameStats.histogram()`; if an emulator lacks it the
dump carries only per-session summaries and the bench says so in its output.

    python -m switchboard_bench.emurun --dump PATH [emulator flags...]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from switchboard import runtime
from switchboard.logs import setup
from switchboard_emulator.config import parse_args
from switchboard_emulator.records import Registry
from switchboard_emulator.server import EmulatorServer

BUCKET_US = 100  # switchboard_emulator.records._BUCKET_US


def pooled_caller_transit(registry: Registry) -> dict[str, Any]:
    """Every session's caller-frame transit histogram summed, plus the per-session summaries."""
    hist: Counter[int] = Counter()
    exact = True
    sessions = []
    max_us = 0
    frames = 0
    for record in registry.find():
        stats = record.caller_frames
        summary = stats.to_json()
        sessions.append(summary["latency_ms"] | {"frames": summary["frames"], "out_of_order": summary["out_of_order"]})
        frames += summary["frames"]
        histogram = getattr(stats, "histogram", None)
        if histogram is None:  # an emulator without pooled buckets: per-session summaries only
            exact = False
            continue
        buckets, session_max_us = histogram()
        hist.update(buckets)
        max_us = max(max_us, session_max_us)
    return {
        "bucket_us": BUCKET_US,
        "pooled": exact,
        "frames": frames,
        "max_us": max_us,
        "hist": sorted(hist.items()),
        "sessions": sessions,
    }


async def _serve(argv: list[str], dump: Path) -> None:
    config = parse_args(argv)
    setup("emulator", config.log_level)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = EmulatorServer(config)
    await server.start()
    try:
        await stop.wait()
    finally:
        # Written before closing: closing waits for every session handler, which a stuck
        # client could delay past the bench's patience.
        dump.write_bytes(orjson.dumps(pooled_caller_transit(server.registry)))  # noqa: ASYNC240 - once, at exit
        await server.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--dump" not in args:
        print("usage: python -m switchboard_bench.emurun --dump PATH [emulator flags]", file=sys.stderr)
        return 2
    i = args.index("--dump")
    dump = Path(args[i + 1])
    del args[i : i + 2]
    runtime.install_event_loop()
    asyncio.run(_serve(args, dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
