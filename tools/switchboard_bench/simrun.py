"""The load generator as its own process, so its CPU never mixes with the system's.

Runs two groups of calls against one URL at once through the call simulator's library: a
*talk* group (every reply plays to the end) and a *barge-in* group (the caller interrupts
every reply but the last). The results are pooled into one `LoadReport`, so the transit
percentiles are exact over every agent frame of every call, not averages of summaries.

    python -m switchboard_bench.simrun PLAN.json REPORT.json
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from switchboard import logs, runtime
from switchboard_callsim.call import SimConfig
from switchboard_callsim.load import LoadReport, run_load
from switchboard_callsim.script import CallScript


def _config(plan: dict[str, Any], group: dict[str, Any]) -> SimConfig:
    return SimConfig(
        url=plan["url"],
        calls=group["calls"],
        ramp_ms=group["ramp_ms"],
        script=CallScript(**group["script"]),
        emulator_url=plan["emulator_url"],
        connect_timeout_s=plan.get("connect_timeout_s", 20.0),
        phase=plan.get("phase", "random"),
        twiml_url=plan.get("twiml_url"),  # the overload run: calls come in through admission control
    )


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    groups = [g for g in plan["groups"] if g["calls"] > 0]
    reports: list[LoadReport] = await asyncio.gather(*(run_load(_config(plan, g)) for g in groups))
    pooled = LoadReport(
        results=[r for rep in reports for r in rep.results],
        started=sum(rep.started for rep in reports),
        wall_s=max(rep.wall_s for rep in reports),
        cpu_s=max(rep.cpu_s for rep in reports),  # each is the whole process's CPU
        max_send_lag_ms=max(rep.max_send_lag_ms for rep in reports),
    )
    data = pooled.to_dict()
    detail = data.pop("calls_detail")
    data["failed_calls"] = [d for d in detail if d["failure"] or d["byte_exact_out"] is False
                            or d["byte_exact_in"] is False][:20]
    data["groups"] = {g["name"]: g["calls"] for g in groups}
    return data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plan = orjson.loads(Path(args[0]).read_bytes())
    logs.setup("callsim", plan.get("log_level", "WARNING"))
    runtime.install_event_loop()
    data = asyncio.run(run(plan))
    Path(args[1]).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
