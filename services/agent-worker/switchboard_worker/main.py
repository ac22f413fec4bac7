"""`switchboard-worker`: settings → logging → claim calls → drain on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from switchboard import logs
from switchboard.runtime import install_event_loop

from .settings import WorkerSettings
from .worker import Worker


async def serve(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(settings):
        await stop.wait()
        logging.getLogger(__name__).info("signal received: draining")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchboard agent worker: Redis ⇄ Deepgram Voice Agent")
    parser.add_argument("--capacity", type=int, help="override WORKER_CAPACITY")
    args = parser.parse_args(argv)
    overrides = {"worker_capacity": args.capacity} if args.capacity else {}
    try:
        settings = WorkerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        sys.exit(f"switchboard-worker: invalid configuration:\n{exc}")
    logs.setup("worker", settings.log_level, settings.worker_id)
    install_event_loop()
    asyncio.run(serve(settings))
