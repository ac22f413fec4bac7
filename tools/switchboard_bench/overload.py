"""Past saturation: offer more calls than the box can hold, ramping up, through admission control.

Calls come in as Twilio's do, through the control API's `/twiml` (CONTROL_ADMISSION=reject),
with the edges' and workers' load thresholds at their production default. What must hold: the
calls admitted keep their latency, the excess hears the busy message, and no admitted call drops.
Each simulated call ends one of three ways: completed (admitted, talked to the end), refused
(the busy message, `<Hangup/>`), or dropped (anything else: must be zero).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from . import latency
from .runner import Plan
from .sampler import Window
from .stack import SwitchboardStack

REFUSED = "the TwiML ended the call before the script finished"  # the busy message and <Hangup/>
SAMPLE_EVERY_S = 1.0


def run_overload(offered: int, plan: Plan, *, workers: int, log_dir: Path, threshold: float = 0.85) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    thresholds = {"WORKER_LOAD_THRESHOLD": str(threshold)}
    stack = SwitchboardStack(
        log_dir, plan.emulator_args, workers=workers, capacity=offered,  # slots never bind: load does
        worker_env=thresholds, edge_env={"EDGE_LOAD_THRESHOLD": str(threshold)},
        control_env={"CONTROL_ADMISSION": "reject"},
    )
    stack.start()
    try:
        time.sleep(1.0)
        tmp = Path(tempfile.mkdtemp(prefix="sb-bench-overload-"))
        sim_plan = plan.sim_plan(stack.url, stack.emulator_http, offered) | {"twiml_url": f"{stack.control_url}/twiml"}
        (tmp / "plan.json").write_bytes(orjson.dumps(sim_plan))
        with open(log_dir / "simulator.log", "ab") as sim_log:
            sim = subprocess.Popen([sys.executable, "-m", "switchboard_bench.simrun", str(tmp / "plan.json"),
                                    str(tmp / "report.json")], stdout=sim_log, stderr=sim_log)
        window = Window(stack.procs, stack.emulator_http, stack.redis.url if stack.redis else None)
        window.begin()
        deadline = time.monotonic() + plan.call_s(offered) + 120
        while sim.poll() is None and time.monotonic() < deadline:
            window.sample()
            time.sleep(SAMPLE_EVERY_S)
        window.end()
        if sim.poll() is None:
            sim.kill()
        sim.wait()
        report = orjson.loads((tmp / "report.json").read_bytes()) if (tmp / "report.json").exists() else {}
    finally:
        dump = stack.stop()
    calls = report.get("calls", {})
    reasons = dict(calls.get("failure_reasons", {}))
    refused = reasons.pop(REFUSED, 0)
    return {
        "offered": offered,
        "completed": calls.get("completed", 0),
        "refused_busy": refused,
        "dropped": sum(reasons.values()),
        "dropped_reasons": reasons,
        "byte_exact": {"agent_to_caller": report.get("byte_exact_out"), "caller_to_agent": report.get("byte_exact_in")},
        "caller_to_deepgram_ms": latency.from_histogram(dump),
        "deepgram_to_caller_ms": report.get("agent_to_caller_transit_ms"),
        "turn_latency_ms": report.get("turn_latency_ms"),
        "barge_in_latency_ms": report.get("barge_in_latency_ms"),
        "window": window.result(),
    }
