"""`switchboard-control`: settings → logging → uvicorn serving the app until SIGTERM/SIGINT.

The first signal stops accepting, finishes requests (up to 10 s) and runs the lifespan
shutdown; a second one, of either kind, exits at once (uvicorn alone forces only on SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE

from switchboard import logs
from switchboard.runtime import force_exit

from .app import create_app
from .settings import ControlSettings

GRACEFUL_SHUTDOWN_S = 10


class _Server(uvicorn.Server):
    """uvicorn's server, with a second SIGTERM or SIGINT during the shutdown ending the process."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._signals = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1 and sig in (signal.SIGTERM, signal.SIGINT):
            force_exit("control", sig)
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchboard control API (REST, TwiML webhook, metrics)")
    parser.add_argument("--port", type=int, help="override CONTROL_PORT (0 = any free port)")
    args = parser.parse_args(argv)
    overrides = {"control_port": args.port} if args.port is not None else {}
    try:
        settings = ControlSettings(**overrides)
    except ValidationError as exc:
        sys.exit(f"switchboard-control: invalid configuration:\n{exc}")
    logs.setup("control", settings.log_level)
    # uvicorn owns the loop and the signals: SIGTERM stops accepting, finishes requests, runs lifespan shutdown.
    config = uvicorn.Config(
        create_app(settings),
        host=settings.control_host,
        port=settings.control_port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # requests are counted in /metrics; a line per poll or SSE reconnect is noise
        proxy_headers=False,
        timeout_keep_alive=settings.control_keep_alive_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config)
    try:
        server.run()  # after a graceful stop, uvicorn re-raises the signal it caught: SIGTERM ends us here
    except KeyboardInterrupt:  # the re-raised SIGINT
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run: the port was taken, or the lifespan startup failed
