"""One retry policy for everything Switchboard retries: jittered exponential pauses, bounded by
an attempt cap and a deadline, with a hook for metrics and logs.

    RECONNECT = Retry(base_s=0.2, cap_s=2.0, attempts=5, deadline_s=10.0)

    # a bounded operation: the last error is raised once the cap or the deadline is reached
    ws = await RECONNECT.call(lambda: connect(url), retry_on=(OSError, TimeoutError), on_retry=count_and_log)

    # the same, when the retried block is more than one call
    async for attempt in RECONNECT.retrying(retry_on=OSError, on_retry=count_and_log):
        with attempt:
            ws = await connect(url)

    # a loop that runs until shutdown and retries forever (attempts=None, deadline_s=None)
    backoff = Retry(base_s=0.05, cap_s=1.0).backoff()
    while not stopping:
        try:
            await write_batch()
        except RedisError:
            await backoff.wait()      # 25-50 ms, then 50-100 ms, ... up to 0.5-1 s
            continue
        backoff.reset()               # the next outage starts from base_s again

The pause before retry n (0-based) is `min(cap_s, base_s * 2**n)`, of which the share `jitter`
is random: many calls that failed at the same moment (a Redis restart, a webhook outage) do not
retry in step. A retry is made only while `attempts` allows another try and its pause ends at
least `min_attempt_s` before the deadline (`deadline_s` counts from the first try).

The policy is pure data; `Backoff` is one run of it, with the clock and the random source
passed in, so that its decisions are tested without sleeping. Why not tenacity or stamina:
the forever loops of the Redis streams need a backoff that resets after a success, egress
retries on answers (5xx) as well as on exceptions and hands each try the budget that is
left, and both are a dozen lines on top of this; a dependency would still need this shim.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Self, TypeVar

__all__ = ["Attempt", "Backoff", "Retry", "Retrying"]

T = TypeVar("T")

_MAX_EXPONENT = 64  # 2**64 × any sane base is far past any cap; keeps floats finite forever


class Retrying(NamedTuple):
    """What the `on_retry` hook hears before each pause."""

    attempt: int  # the try that failed, 1-based
    pause_s: float  # the wait before the next try
    error: BaseException | None  # what failed it, if an exception


OnRetry = Callable[[Retrying], object]


@dataclass(frozen=True, slots=True)
class Retry:
    base_s: float = 0.05
    cap_s: float = 2.0
    attempts: int | None = None  # tries in all, the first included; None: no cap
    deadline_s: float | None = None  # budget from the first try; None: no deadline
    jitter: float = 0.5  # the random share of each pause, 0 (none) to 1 (full jitter)
    min_attempt_s: float = 0.0  # a retry is worth making only with this much budget left after its pause

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.cap_s >= self.base_s):
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def pause_s(self, retry: int, unit: float) -> float:
        """The pause before retry `retry` (0-based), `unit` a random number in [0, 1)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(retry, _MAX_EXPONENT))
        return ceiling * (1 - self.jitter) + ceiling * self.jitter * unit

    def backoff(
        self, *, on_retry: OnRetry | None = None, unit: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> Backoff:
        """One run of this policy (its deadline starts now)."""
        return Backoff(self, on_retry=on_retry, unit=unit, clock=clock)

    def retrying(
        self, *, retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        on_retry: OnRetry | None = None, unit: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> Attempts:
        """Tries to run as `with attempt:` blocks; see the module docstring."""
        return Attempts(self.backoff(on_retry=on_retry, unit=unit, clock=clock), retry_on, sleep)

    async def call(
        self, fn: Callable[[], Awaitable[T]], /, *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        on_retry: OnRetry | None = None,
    ) -> T:
        """`await fn()`, retried on `retry_on`; raises the last error when out of tries."""
        async for attempt in self.retrying(retry_on=retry_on, on_retry=on_retry):
            with attempt:
                return await fn()
        raise AssertionError("unreachable: the last attempt returns or raises")


class Backoff:
    """One run of a `Retry` policy: counts failures in a row and decides each pause."""

    def __init__(self, policy: Retry, *, on_retry: OnRetry | None, unit: Callable[[], float],
                 clock: Callable[[], float]) -> None:
        self.policy = policy
        self._on_retry = on_retry
        self._unit = unit
        self._clock = clock
        self._started = clock()
        self.failures = 0  # in a row, since the start or the last reset

    @property
    def remaining_s(self) -> float:
        """Budget left before the deadline (infinite without one)."""
        if self.policy.deadline_s is None:
            return math.inf
        return self.policy.deadline_s - (self._clock() - self._started)

    def next_pause(self, error: BaseException | None = None) -> float | None:
        """Count a failed try: the pause before the next one, or None if the policy allows none."""
        self.failures += 1
        policy = self.policy
        if policy.attempts is not None and self.failures >= policy.attempts:
            return None
        pause = policy.pause_s(self.failures - 1, self._unit())
        if self.remaining_s - pause < policy.min_attempt_s:
            return None
        if self._on_retry is not None:
            self._on_retry(Retrying(self.failures, pause, error))
        return pause

    async def wait(self, error: BaseException | None = None) -> bool:
        """Count a failed try and sleep before the next; False (at once) if there is none."""
        pause = self.next_pause(error)
        if pause is None:
            return False
        await asyncio.sleep(pause)
        return True

    def reset(self) -> None:
        """A try succeeded: the next failure starts from `base_s`, with the whole budget again."""
        self.failures = 0
        self._started = self._clock()


class Attempt:
    """One try: a context manager that keeps a retryable error for the iterator to judge."""

    def __init__(self, number: int, retry_on: type[BaseException] | tuple[type[BaseException], ...]) -> None:
        self.number = number  # 1-based
        self.error: BaseException | None = None
        self._retry_on = retry_on

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if error is None or not isinstance(error, self._retry_on) or isinstance(error, asyncio.CancelledError):
            return False
        self.error = error
        return True


class Attempts:
    """Async iterator of `Attempt`s: ends after a try that did not fail; re-raises the last
    error once the policy allows no other try."""

    def __init__(self, backoff: Backoff, retry_on: type[BaseException] | tuple[type[BaseException], ...],
                 sleep: Callable[[float], Awaitable[object]]) -> None:
        self.backoff = backoff
        self._retry_on = retry_on
        self._sleep = sleep
        self._last: Attempt | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Attempt:
        last = self._last
        if last is not None:
            if last.error is None:
                raise StopAsyncIteration
            pause = self.backoff.next_pause(last.error)
            if pause is None:
                raise last.error
            await self._sleep(pause)
        self._last = Attempt(1 if last is None else last.number + 1, self._retry_on)
        return self._last
