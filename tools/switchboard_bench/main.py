"""`switchboard-bench`: Switchboard and a direct relay under the same call load, level by level.

For each concurrency level: a fresh Switchboard (private redis-server, emulator, edge, N
workers) is loaded by the call simulator in its own process, then a fresh direct relay (one
process, no Redis) with the same load. Reports per level: calls completed/failed,
byte-exact audio, transit per direction measured at both ends (and Switchboard's addition
over the relay), turn and barge-in latency, CPU seconds per call-minute, RSS per process and
per call, Redis ops/s, the simulator's and emulator's CPU. JSON + table (+ Markdown, SVG).

Exit status: 0 when every run completed every call byte-exact, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from . import report
from .compare import compare
from .overload import run_overload
from .profile import Profiler
from .runner import Plan, run_level

QUICK = {"levels": "2", "barge_in_share": 0.5, "duration_s": 3.0, "ramp_s": 0.5, "settle_s": 1.5, "workers": 1,
         "utterance_ms": 400, "lead_ms": 300, "eou_ms": 200, "think_ms": 50, "reply_ms": 800,
         "barge_in_after_ms": 200}
PLAN_OVERRIDES = ("utterance_ms", "lead_ms", "eou_ms", "think_ms", "reply_ms", "barge_in_after_ms")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="switchboard-bench", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--levels", default="1,20,100,500", help="concurrent calls per level, comma-separated")
    a("--duration-s", type=float, default=30.0, help="steady window per run (all calls live)")
    a("--ramp-s", type=float, help="spread call starts over this long (default 20 ms per call, ≥ 1 s)")
    a("--settle-s", type=float, default=3.0, help="after the ramp, before the window opens")
    a("--workers", type=int, default=2, help="agent workers (capacity is sized to the level)")
    a("--barge-in-share", type=float, default=0.25, help="share of calls that interrupt every reply but the last")
    a("--overload", type=int, metavar="CALLS",
      help="instead of the levels: offer this many calls through /twiml admission control, ramping up, with the "
           "production load thresholds, and count completed / refused (busy) / dropped")
    a("--load-threshold", type=float, default=0.85,
      help="with --overload: the edges' and workers' load threshold (the services' default)")
    a("--phase", choices=("random", "aligned"), default="random",
      help="when in the 20 ms period each call sends: at random (as independent real calls) or all at once")
    a("--agent-chunk-ms", type=int, default=100, help="agent audio per Deepgram message (multiple of 20)")
    a("--no-relay", action="store_true", help="skip the direct-relay baseline")
    a("--quick", action="store_true", help="smoke preset: 2 calls, 3 s window, short turns, 1 worker")
    a("--profile-level", type=int, help="py-spy the edge, first worker and relay during this level's window")
    a("--json", type=Path, default=Path("bench-results/bench.json"))
    a("--markdown", type=Path, help="also write the table as Markdown here")
    a("--svg", type=Path, help="also write a latency-vs-concurrency plot here")
    a("--log-dir", type=Path, default=Path("bench-results/logs"))
    a("--worker-env", action="append", default=[], metavar="K=V", help="extra worker environment (repeat)")
    a("--edge-env", action="append", default=[], metavar="K=V", help="extra edge environment (repeat)")
    a("--redis-cluster", type=int, default=0, metavar="MASTERS",
      help="run Switchboard on a local Redis Cluster of this many masters (instead of one redis-server)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if p.get_default(key) == getattr(args, key, None) or getattr(args, key, None) is None:
                setattr(args, key, value)
    try:
        args.level_list = [int(x) for x in str(args.levels).split(",") if x.strip()]
    except ValueError:
        p.error("--levels must be integers, e.g. 1,20,100")
    if not args.level_list or min(args.level_list) < 1 or args.workers < 1 or args.duration_s <= 0:
        p.error("levels and --workers must be >= 1, --duration-s > 0")
    return args


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "git_commit": commit, "git_dirty": dirty}


def _profiler(args: argparse.Namespace, level: int, plan: Plan) -> Profiler | None:
    return Profiler(args.json.parent, level, plan.duration_s) if args.profile_level == level else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan(duration_s=args.duration_s, ramp_s=args.ramp_s, settle_s=args.settle_s,
                barge_in_share=args.barge_in_share, phase=args.phase, agent_chunk_ms=args.agent_chunk_ms,
                **{k: getattr(args, k) for k in PLAN_OVERRIDES if hasattr(args, k)})
    if args.overload:
        print(f"• offering {args.overload} calls through admission control …", file=sys.stderr, flush=True)
        return {"command": " ".join(["switchboard-bench", *sys.argv[1:]]), "machine": machine(),
                "overload": run_overload(args.overload, plan, workers=args.workers, log_dir=args.log_dir / "overload",
                                         threshold=args.load_threshold)}
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    edge_env = dict(kv.split("=", 1) for kv in args.edge_env)
    result: dict[str, Any] = {"command": " ".join(["switchboard-bench", *sys.argv[1:]]), "machine": machine(),
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "config": {"levels": args.level_list, "workers": args.workers, "plan": plan.__repr__(),
                                         "worker_env": worker_env, "edge_env": edge_env}, "levels": []}
    for level in args.level_list:
        print(f"• {level} calls: switchboard …", file=sys.stderr, flush=True)
        sb = run_level("switchboard", level, plan, workers=args.workers, log_dir=args.log_dir / f"{level}-switchboard",
                       worker_env=worker_env, edge_env=edge_env, profiler=_profiler(args, level, plan),
                       cluster_masters=args.redis_cluster)
        relay = None
        if not args.no_relay:
            print(f"• {level} calls: direct relay …", file=sys.stderr, flush=True)
            relay = run_level("relay", level, plan, workers=args.workers, log_dir=args.log_dir / f"{level}-relay",
                              profiler=_profiler(args, level, plan))
        result["levels"].append(compare(sb, relay))
        _write(args, result)  # after every level: a long run that dies still leaves its numbers
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def _write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


def all_clean(result: dict[str, Any]) -> bool:
    for lvl in result["levels"]:
        for run_ in (lvl["switchboard"], lvl.get("direct_relay")):
            if run_ is None:
                continue
            ex = run_["byte_exact"]
            if run_["calls"]["failed"] or run_["calls"]["completed"] != run_["level"] or not ex["agent_to_caller"]:
                return False
            if any(ex[k]["false"] for k in ex):
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    _write(args, result)
    if "overload" in result:
        print(report.overload(result["overload"]))
        print(f"\nJSON: {args.json}", file=sys.stderr)
        over = result["overload"]
        return 0 if over["dropped"] == 0 and over["completed"] + over["refused_busy"] == over["offered"] else 1
    if args.markdown:
        args.markdown.write_text(report.markdown(result) + "\n")
    if args.svg:
        args.svg.write_text(report.svg(result))
    print(report.table(result))
    print(f"\nJSON: {args.json}", file=sys.stderr)
    return 0 if all_clean(result) else 1


if __name__ == "__main__":
    sys.exit(main())
