"""`switchboard-worker`: settings → logging → claim calls → drain on SIGTERM/SIGINT (a second one exits at once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from switchboard import logs
from switchboard.runtime import Shutdown, install_event_loop

from . import metrics
from .settings import WorkerSettings
from .worker import Worker

log = logging.getLogger(__name__)


async def serve(settings: WorkerSettings) -> int:
    """Claim calls until SIGTERM/SIGINT or a crashed background loop, then drain; the exit status.

    A second signal during the drain exits at once (see switchboard.runtime).
    """
    stop = Shutdown("worker")
    async with Worker(settings) as worker:
        reason = await stop.wait(worker.tasks.failed)
        log.info("stop requested: draining", extra={"reason": reason})
    return 1 if worker.tasks.failures else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchboard agent worker: Redis ⇄ Deepgram Voice Agent")
    parser.add_argument("--capacity", type=int, help="override WORKER_CAPACITY")
    args = parser.parse_args(argv)
    overrides = {"worker_capacity": args.capacity} if args.capacity else {}
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        sys.exit(f"switchboard-worker: invalid configuration:\n{exc}")
    logs.setup("worker", settings.log_level, settings.worker_id)
    warn_about_webhook_settings(settings)
    install_event_loop()
    sys.exit(asyncio.run(serve(settings)))


def warn_about_webhook_settings(settings: WorkerSettings) -> None:
    """Say once, at start, what makes function webhooks less safe than the defaults."""
    unsigned = settings.function_secret is None
    metrics.WEBHOOKS_UNSIGNED.set(int(unsigned))
    if unsigned:
        log.warning("FUNCTION_SECRET is not set: function webhooks go out UNSIGNED, so their receivers "
                    "cannot tell Switchboard's calls from anyone else's; set FUNCTION_SECRET in production")
    policy = settings.egress_policy
    if policy.allow_http or policy.allow_networks or policy.allow_hosts:
        log.warning("webhook egress relaxed for development: plain http %s, allowed beyond public addresses: %s",
                    "allowed" if policy.allow_http else "refused", settings.worker_egress_allow or "nothing")
