"""`switchboard-twilio-emulator`: settings → logging → serve until SIGINT/SIGTERM → hang up and stop.

`switchboard-twilio-emulator place …` is the load generator instead (see load.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from switchboard import logs, runtime

from .config import EmulatorConfig, parse_args
from .server import TwilioEmulator

log = logging.getLogger("switchboard_twilio_emulator")


async def serve_until_signalled(config: EmulatorConfig, callees: Sequence[str]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("signal %d: shutting down (again to force)", signum)
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal kills a stuck shutdown
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with TwilioEmulator(config, callees) as twilio:
        # Scripts that start the emulator on port 0 read the bound address from this line.
        print(f"switchboard-twilio-emulator listening on {twilio.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["place"]:
        from .load import main as place

        return place(args[1:])
    config, callees = parse_args(args)
    logs.setup("twilio-emulator", config.log_level)
    runtime.install_event_loop()
    asyncio.run(serve_until_signalled(config, callees))
    return 0


if __name__ == "__main__":
    sys.exit(main())
