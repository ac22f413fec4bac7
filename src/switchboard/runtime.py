"""Process-level runtime choices shared by every service."""

from __future__ import annotations

import asyncio
import os


def install_event_loop() -> None:
    """Use uvloop when available: it roughly halves per-message loop overhead.

    SWITCHBOARD_NO_UVLOOP=1 keeps the stdlib loop (for profiling or comparison).
    """
    if os.environ.get("SWITCHBOARD_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
