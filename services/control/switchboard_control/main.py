"""`switchboard-control`: settings → logging → uvicorn serving the app until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from switchboard import logs

from .app import create_app
from .settings import ControlSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchboard control API (REST, TwiML webhook, metrics)")
    parser.add_argument("--port", type=int, help="override CONTROL_PORT (0 = any free port)")
    args = parser.parse_args(argv)
    overrides = {"control_port": args.port} if args.port is not None else {}
    try:
        settings = ControlSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        sys.exit(f"switchboard-control: invalid configuration:\n{exc}")
    logs.setup("control", settings.log_level)
    # uvicorn owns the loop and the signals: SIGTERM stops accepting, finishes requests, runs lifespan shutdown.
    uvicorn.run(
        create_app(settings),
        host=settings.control_host,
        port=settings.control_port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # requests are counted in /metrics; a line per poll or SSE reconnect is noise
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
