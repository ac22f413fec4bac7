"""Fire-and-forget Redis bookkeeping: a failure is counted and logged, and never raised.

Some writes matter to nobody the moment they fail (a counter in a call record, a wake-up that
the next read makes up for, a refresh retried on the next tick). Each such block is wrapped
in `best_effort` instead of its own try/except/count/log lines:

    async with best_effort("record the barge-in", errors=metrics.REDIS_ERRORS, extra=session.extra):
        await redis.hincrby(call_key, "barge_ins", 1)

A loop that fails on every tick during an outage shares one `Outage`, so that it logs the
first failure and the recovery, not one line per tick (the metric still counts each):

    fleet_read = Outage()
    async with best_effort("read the fleet capacity", errors=metrics.REDIS_ERRORS, outage=fleet_read) as attempt:
        view = await capacity.read(redis, keys)
    if not attempt.failed:
        use(view)

Only `RedisError` is absorbed: a bug (any other exception) and cancellation pass through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from redis.exceptions import RedisError

__all__ = ["Outage", "best_effort"]

_log = logging.getLogger(__name__)


class SupportsInc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Outage:
    """Whether the last try of a repeated best-effort block failed: logs once per outage."""

    def __init__(self) -> None:
        self.failing = False


class best_effort:
    def __init__(
        self, what: str, *, errors: SupportsInc | None = None, extra: Mapping[str, Any] | None = None,
        outage: Outage | None = None, logger: logging.Logger | None = None,
    ) -> None:
        self.what = what
        self._errors = errors
        self._extra = dict(extra) if extra else {}
        self._outage = outage
        self._log = logger or _log
        self.failed = False
        self.error: RedisError | None = None

    def __enter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if error is None:
            if self._outage is not None and self._outage.failing:
                self._outage.failing = False
                self._log.info("%s: Redis answers again", self.what, extra=self._extra)
            return False
        if not isinstance(error, RedisError):
            return False
        self.failed, self.error = True, error
        if self._errors is not None:
            self._errors.inc()
        if self._outage is None or not self._outage.failing:
            self._log.warning("could not %s: %s", self.what, error, extra=self._extra)
        if self._outage is not None:
            self._outage.failing = True
        return True

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> bool:
        return self.__exit__(kind, error, tb)
