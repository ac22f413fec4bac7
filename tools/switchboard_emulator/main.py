"""`switchboard-deepgram-emulator`: settings → logging → serve until SIGINT/SIGTERM → drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from switchboard.logs import setup

from .config import EmulatorConfig, parse_args
from .server import EmulatorServer

log = logging.getLogger("switchboard_emulator")


async def serve_until_signalled(config: EmulatorConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("signal %d: shutting down (again to force)", signum)
        stop.set()
        # Restore the default handlers so that a second signal kills a stuck shutdown.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with EmulatorServer(config) as emulator:
        # Scripts that start the emulator on port 0 read the bound port from this line.
        print(f"switchboard-deepgram-emulator listening on {emulator.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    setup("emulator", config.log_level)
    asyncio.run(serve_until_signalled(config))


if __name__ == "__main__":
    main()
