"""`switchboard-local`: the whole system on one machine, without Docker, with one command.

Starts what is missing (redis-server when REDIS_URL is unset and nothing listens on
6379; the bundled Deepgram emulator when DEEPGRAM_API_KEY is unset), then the edge, the
workers and the control API, places one simulated call, prints its transcript and turn
latency, and keeps serving until Ctrl-C so a real Twilio number can be pointed at it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import orjson
import redis as redis_sync

from . import procs
from switchboard.keys import Keys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--edge-port", type=int, default=int(os.environ.get("EDGE_PORT", 8080)))
    parser.add_argument("--control-port", type=int, default=int(os.environ.get("CONTROL_PORT", 8000)))
    parser.add_argument("--emulator-port", type=int, default=8765)
    parser.add_argument("--log-dir", default="var/log", help="where each process writes its JSON log")
    parser.add_argument("--no-demo-call", action="store_true", help="do not place the simulated call")
    parser.add_argument("--exit-after-call", action="store_true", help="stop everything after the demo call")
    parser.add_argument("--turns", type=int, default=2, help="turns in the demo call")
    return parser.parse_args(argv)


class LocalSystem:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir = Path(args.log_dir)
        self.services: list[procs.Service] = []
        self.redis_server: procs.RedisServer | None = None
        self.redis_url = os.environ.get("REDIS_URL", "")
        self.key_prefix = os.environ.get("KEY_PREFIX", "sb:")
        self.emulated = not os.environ.get("DEEPGRAM_API_KEY")
        self.control_token = os.environ.get("CONTROL_API_TOKEN") or secrets.token_urlsafe(24)

    def start(self) -> None:
        self._start_redis()
        if self.emulated:
            url, key = self._start_emulator()
        else:
            url = os.environ.get("DEEPGRAM_AGENT_URL", "wss://agent.deepgram.com/v1/agent/converse")
            key = os.environ["DEEPGRAM_API_KEY"]
        common = {"KEY_PREFIX": self.key_prefix}
        edge_env = {**common}
        if os.environ.get("TWILIO_AUTH_TOKEN"):
            edge_env["EDGE_HOST"] = "0.0.0.0"
        self._launch(procs.edge(self.redis_url, self.args.edge_port, procs.free_port(),
                                auth_token=os.environ.get("TWILIO_AUTH_TOKEN"), **edge_env))
        for n in range(self.args.workers):
            self._launch(procs.worker(self.redis_url, procs.free_port(), url, key, worker_id=f"worker-{n + 1}", **common))
        self._start_control(common)

    def _start_redis(self) -> None:
        if self.redis_url:
            return
        if procs.port_open("127.0.0.1", 6379):
            self.redis_url = "redis://127.0.0.1:6379/0"
            print("• using the redis-server already listening on 127.0.0.1:6379")
            return
        self.redis_server = procs.RedisServer(port=6379).start()
        self.redis_url = self.redis_server.url
        print("• started redis-server on 127.0.0.1:6379 (nothing persisted)")

    def _start_emulator(self) -> tuple[str, str]:
        port = self.args.emulator_port if not procs.port_open("127.0.0.1", self.args.emulator_port) else procs.free_port()
        self._launch(procs.emulator(port))
        print(f"• DEEPGRAM_API_KEY is not set: using the bundled Deepgram emulator on ws://127.0.0.1:{port}")
        return f"ws://127.0.0.1:{port}/v1/agent/converse", "local-emulator-key"

    def _start_control(self, common: dict[str, str]) -> None:
        try:
            import switchboard_control.main  # noqa: F401
        except ImportError:
            self.control_token = ""
            return
        env = {**common, "REDIS_URL": self.redis_url, "CONTROL_PORT": str(self.args.control_port),
               "CONTROL_HOST": "127.0.0.1", "CONTROL_API_TOKEN": self.control_token,
               "EDGE_PUBLIC_URL": os.environ.get("EDGE_PUBLIC_URL", f"ws://127.0.0.1:{self.args.edge_port}/twilio"),
               # A local run serves the API's browsable docs (production keeps them off).
               "CONTROL_PUBLIC_DOCS": os.environ.get("CONTROL_PUBLIC_DOCS", "true")}
        if not os.environ.get("TWILIO_AUTH_TOKEN"):
            env["CONTROL_INSECURE_NO_AUTH"] = "false"
            env["CONTROL_INSECURE_TWIML"] = "true"
        service = procs.Service("control", procs.console("switchboard-control"), env,
                                health_url=f"http://127.0.0.1:{self.args.control_port}/healthz")
        self._launch(service)

    def _launch(self, service: procs.Service) -> None:
        service.start(self.log_dir)
        self.services.append(service)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=30)
        if self.redis_server:
            self.redis_server.stop()

    def print_summary(self) -> None:
        edge = f"ws://127.0.0.1:{self.args.edge_port}/twilio"
        print(f"\nSwitchboard is running. Logs: {self.log_dir}/")
        print(f"  Twilio stream URL : {edge}  (expose it as wss:// through a tunnel for a real number)")
        if not self.control_token:
            return
        print(f"  Control API       : http://127.0.0.1:{self.args.control_port}  (docs at /docs)")
        print(f"  Control API token : {self.control_token}")
        print(f"  Example           : curl -H 'Authorization: Bearer {self.control_token}' "
              f"http://127.0.0.1:{self.args.control_port}/v1/calls")


async def demo_call(system: LocalSystem) -> bool:
    from switchboard_callsim.call import SimConfig, run_call
    from switchboard_callsim.script import CallScript

    config = SimConfig(url=f"ws://127.0.0.1:{system.args.edge_port}/twilio",
                       auth_token=os.environ.get("TWILIO_AUTH_TOKEN"),
                       script=CallScript(turns=system.args.turns), synthetic=system.emulated)
    print("\n• placing a simulated call through edge → Redis → worker → Deepgram …")
    result = await run_call(config)
    _print_transcript(system, result.stream_sid)
    latencies = sorted(result.turn_latencies_us)
    if latencies:
        print("  turn latency (caller stops → agent audio arrives): "
              + ", ".join(f"{us / 1000:.0f} ms" for us in result.turn_latencies_us))
    verdict = "ok" if result.ok else f"FAILED ({result.failure})"
    print(f"  call {result.call_sid}: {verdict}; agent audio byte-exact: {result.byte_exact_out}")
    return result.ok


def _print_transcript(system: LocalSystem, stream_sid: str) -> None:
    client = redis_sync.Redis.from_url(system.redis_url)
    keys = Keys(system.key_prefix)
    deadline = time.monotonic() + 5
    rows: list = []
    while time.monotonic() < deadline:
        rows = client.xrange(keys.events(stream_sid))
        if any(orjson.loads(f[b"p"]).get("type") == "call_ended" for _, f in rows):
            break
        time.sleep(0.1)
    print("  transcript:")
    for _, fields in rows:
        event = orjson.loads(fields[b"p"])
        if event.get("type") == "transcript":
            print(f"    {event['role']:>9}: {event['content']}")
        elif event.get("type") in ("barge_in", "error"):
            print(f"    {'':>9}  [{event['type']}{': ' + str(event.get('code')) if event.get('code') else ''}]")
        elif event.get("type") == "reply_heard" and event.get("interrupted"):
            print(f"    {'':>9}  [the caller heard {event['heard_ms']} of {event['audio_ms']} ms: "
                  f"\"{event['heard_text']}\"]")
        elif event.get("type") == "turn_latency" and "switchboard_ms" in event:
            stages = event["stages"]
            print(f"    {'':>9}  [turn {event['reply']}: Switchboard {event['switchboard_ms']:.1f} ms "
                  f"(in {stages.get('caller_to_deepgram', 0):.1f}, out {stages.get('worker_to_edge', 0):.1f}); "
                  f"Deepgram {stages.get('deepgram_total', 0):.0f} ms]")
    client.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    system = LocalSystem(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ok = True
    try:
        system.start()
        if not args.no_demo_call:
            ok = asyncio.run(demo_call(system))
        if args.exit_after_call:
            return
        system.print_summary()
        print("\nPress Ctrl-C to stop.")
        while all(s.alive() for s in system.services):
            time.sleep(0.5)
        print("a process exited; stopping (see its log)", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        print("\nstopping …")
    except (RuntimeError, TimeoutError) as exc:
        print(f"switchboard-local: {exc}", file=sys.stderr)
        ok = False
    finally:
        system.stop()
    sys.exit(0 if ok else 1)
