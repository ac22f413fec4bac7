"""`switchboard-edge`: settings → logging → serve → drain on SIGTERM/SIGINT (a second one exits at once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from switchboard import logs
from switchboard.runtime import Shutdown, install_event_loop

from .server import EdgeServer
from .settings import EdgeSettings

log = logging.getLogger(__name__)


async def serve(settings: EdgeSettings) -> int:
    """Run until SIGTERM/SIGINT or a crashed background loop, then drain; the exit status."""
    stop = Shutdown("edge")
    async with EdgeServer(settings) as server:
        reason = await stop.wait(server.tasks.failed)
        log.info("shutting down: closing streams", extra={"reason": reason})
    return 1 if server.tasks.failures else 0


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
    sys.exit(asyncio.run(serve(settings)))
