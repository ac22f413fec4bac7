"""`switchboard-edge`: settings → logging → serve → drain on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from switchboard import logs
from switchboard.runtime import install_event_loop

from .server import EdgeServer
from .settings import EdgeSettings


async def serve(settings: EdgeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with EdgeServer(settings):
        await stop.wait()
        logging.getLogger(__name__).info("shutting down: closing streams")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchboard edge: Twilio Media Streams ⇄ Redis")
    parser.add_argument("--port", type=int, help="override EDGE_PORT")
    parser.add_argument("--insecure-dev", action="store_true", help="accept unsigned streams (development only)")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["edge_port"] = args.port
    if args.insecure_dev:
        overrides["edge_insecure_no_signature"] = True
    try:
        settings = EdgeSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        sys.exit(f"switchboard-edge: invalid configuration:\n{exc}")
    logs.setup("edge", settings.log_level, settings.edge_id)
    install_event_loop()
    asyncio.run(serve(settings))
