"""`switchboard-local`: the whole system on one machine, without Docker, with one command.

Starts what is missing (redis-server when REDIS_URL is unset and nothing listens on
6379; the bundled Deepgram emulator when DEEPGRAM_API_KEY is unset), then the edge, the
workers and the control API, places one simulated call through `POST /twiml`, prints its
transcript and turn latency, and keeps serving until SIGINT (Ctrl-C) or SIGTERM so a real
Twilio number can be pointed at it. A second SIGINT or SIGTERM kills everything at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from . import democall, procs, twilio_local
from .stack import Stack
from .twilio_setup import SetupError, TwilioSetup

DEEPGRAM_AGENT_URL = "wss://agent.deepgram.com/v1/agent/converse"
LOCAL_REDIS_PORT = 6379
EXIT_FORCED = 130  # 128 + SIGINT, as a shell reports a process it interrupted


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="switchboard-local", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--edge-port", type=int, default=int(os.environ.get("EDGE_PORT", 8080)))
    parser.add_argument("--control-port", type=int, default=int(os.environ.get("CONTROL_PORT", 8000)))
    parser.add_argument("--emulator-port", type=int, default=8765)
    parser.add_argument("--log-dir", default="var/log", help="where each process writes its JSON log")
    parser.add_argument("--no-demo-call", action="store_true", help="do not place the simulated call")
    parser.add_argument("--exit-after-call", action="store_true", help="stop everything after the demo call")
    parser.add_argument("--turns", type=int, default=2, help="turns in the demo call")
    parser.add_argument("--print-twilio-setup", action="store_true",
                        help="print the tunnels, webhook URL and TwiML for EDGE_PUBLIC_URL and CONTROL_PUBLIC_URL, "
                        "then exit (starts nothing)")
    parser.add_argument("--profile", help="with --print-twilio-setup: the agent profile of the number")
    return parser.parse_args(argv)


class ForcedExit(BaseException):
    """A second stop signal: kill every process now instead of waiting for the drain."""


class StopSignals:
    """The first SIGINT/SIGTERM stops the system cleanly, the second forces it down.

    The handlers are installed explicitly: a process started in the background by a
    non-interactive shell inherits SIGINT as ignored, and Python then leaves it ignored,
    which is why `kill -INT <pid>` used to do nothing.
    """

    def __init__(self) -> None:
        self.received = 0

    def install(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.on_signal)
        return self

    @property
    def forced(self) -> bool:
        return self.received > 1

    def on_signal(self, signum: int, frame: FrameType | None = None) -> None:
        self.received += 1
        if self.received == 1:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        raise ForcedExit(signal.Signals(signum).name)


def build_stack(args: argparse.Namespace, environ: Mapping[str, str]) -> Stack:
    """The local system as `args` and the environment ask for (pure: nothing is started)."""
    redis_url = environ.get("REDIS_URL", "")
    if not redis_url and procs.port_open("127.0.0.1", LOCAL_REDIS_PORT):
        redis_url = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    auth_token = environ.get("TWILIO_AUTH_TOKEN") or None
    emulated = not environ.get("DEEPGRAM_API_KEY")
    emulator_port = args.emulator_port
    if emulated and procs.port_open("127.0.0.1", emulator_port):
        emulator_port = procs.free_port()
    control_env = {
        # A local run serves the API's browsable docs (production keeps them off).
        "CONTROL_PUBLIC_DOCS": environ.get("CONTROL_PUBLIC_DOCS", "true"),
        "EDGE_PUBLIC_URL": environ.get("EDGE_PUBLIC_URL", f"ws://127.0.0.1:{args.edge_port}/twilio"),
    }
    if not auth_token:
        control_env["CONTROL_INSECURE_NO_AUTH"] = "false"  # the API keeps its token; only /twiml is open
    if twilio_local.emulated(environ):  # no Twilio account: outbound calls go to the bundled REST emulator
        control_env.update(twilio_local.control_env(environ, args.control_port))
    worker_env = twilio_local.worker_env(environ, control_env)  # transfers go through it too
    return Stack(
        log_dir=Path(args.log_dir),
        key_prefix=environ.get("KEY_PREFIX", "sb:"),
        redis_url=redis_url,
        redis_port=LOCAL_REDIS_PORT,
        deepgram_url="" if emulated else environ.get("DEEPGRAM_AGENT_URL", DEEPGRAM_AGENT_URL),
        deepgram_api_key=environ.get("DEEPGRAM_API_KEY") or "local-emulator-key",
        emulator_port=emulator_port,
        edge_port=args.edge_port,
        auth_token=auth_token,
        # With a Twilio token the edge is meant for a tunnel, which may come from another interface.
        edge_env={"EDGE_HOST": "0.0.0.0"} if auth_token else {},
        workers=args.workers,
        worker_env=worker_env,
        worker_id_format="worker-{n}",
        control=True,
        control_port=args.control_port,
        control_token=environ.get("CONTROL_API_TOKEN", ""),
        control_env=control_env,
    )


def _start(stack: Stack) -> None:
    reused_redis = bool(stack.redis_url)
    emulated = not stack.deepgram_url
    stack.start()
    twilio = twilio_local.start(stack, os.environ)
    if stack.redis_server is not None:
        print(f"• started redis-server on 127.0.0.1:{stack.redis_server.port} (nothing persisted)")
    elif reused_redis and "REDIS_URL" not in os.environ:
        print(f"• using the redis-server already listening on 127.0.0.1:{LOCAL_REDIS_PORT}")
    if twilio is not None:
        print(f"• TWILIO_ACCOUNT_SID is not set: outbound calls go to the bundled Twilio REST emulator on "
              f"{stack.control_env['TWILIO_API_BASE_URL']}")
    if emulated:
        print(f"• DEEPGRAM_API_KEY is not set: using the bundled Deepgram emulator on ws://127.0.0.1:{stack.emulator_port}")


def _print_summary(stack: Stack) -> None:
    print(f"\nSwitchboard is running. Logs: {stack.log_dir}/")
    print(f"  Twilio stream URL : {stack.edge_url}  (expose it as wss:// through a tunnel for a real number)")
    print(f"  Control API       : {stack.control_url}  (docs at /docs)")
    print(f"  Control API token : {stack.control_token}")
    print(f"  Web console       : {stack.control_url}/console/  (sign in with the token above)")
    print(f"  Example           : curl -H 'Authorization: Bearer {stack.control_token}' {stack.control_url}/v1/calls")
    print("  A real number     : ./dev twilio-setup  (prints the tunnels, webhook and TwiML)")


def _serve(stack: Stack, args: argparse.Namespace) -> int:
    _start(stack)
    ok = True
    if not args.no_demo_call:
        print("\n• placing a simulated call through control → edge → Redis → worker → Deepgram …")
        result = asyncio.run(democall.place(stack, turns=args.turns, auth_token=stack.auth_token,
                                            control_public_url=os.environ.get("CONTROL_PUBLIC_URL"),
                                            synthetic=stack.emulator is not None))
        democall.report(stack, result)
        ok = result.ok
    if args.exit_after_call:
        return 0 if ok else 1
    _print_summary(stack)
    print("\nPress Ctrl-C to stop (twice to kill at once).", flush=True)
    while stack.alive():
        time.sleep(0.5)
    print("a process exited; stopping (see its log)", file=sys.stderr)
    return 1


def _stop(stack: Stack, signals: StopSignals) -> bool:
    """Stop cleanly; on a second signal (now or during the stop) kill everything. True if forced."""
    if not signals.forced:
        try:
            stack.stop()
            return False
        except ForcedExit:
            pass
    print("second stop signal: killing every process now", file=sys.stderr, flush=True)
    stack.kill()
    return True


def print_twilio_setup(args: argparse.Namespace) -> int:
    try:
        setup = TwilioSetup.from_env(dict(os.environ), profile=args.profile)
    except SetupError as exc:
        print(f"switchboard-local: {exc}", file=sys.stderr)
        return 2
    print(setup.render(args.edge_port, args.control_port))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.print_twilio_setup:
        sys.exit(print_twilio_setup(args))
    signals = StopSignals().install()
    stack = build_stack(args, os.environ)
    code = 1
    try:
        code = _serve(stack, args)
    except KeyboardInterrupt:
        print("\nstopping … (Ctrl-C again to kill at once)", flush=True)
        code = 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"switchboard-local: {exc}", file=sys.stderr)
    except ForcedExit:
        pass  # a second signal before the first was handled: _stop kills
    finally:
        if _stop(stack, signals):
            code = EXIT_FORCED
    sys.exit(code)
