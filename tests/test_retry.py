"""The shared retry policy: pauses, caps, deadlines and the hook, decided on a hand-moved clock."""

import asyncio
import random

import pytest

from switchboard.retry import Retry, Retrying


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pauses_grow_exponentially_up_to_the_cap_and_the_jitter_is_the_given_share():
    policy = Retry(base_s=0.1, cap_s=1.0, jitter=0.5)
    assert [policy.pause_s(n, 0.0) for n in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert [policy.pause_s(n, 0.999999) for n in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert Retry(base_s=0.1, cap_s=1.0, jitter=0.0).pause_s(2, 0.7) == pytest.approx(0.4)
    assert Retry(base_s=0.1, cap_s=1.0, jitter=1.0).pause_s(2, 0.5) == pytest.approx(0.2)
    assert policy.pause_s(10_000, 0.5) == pytest.approx(0.75)  # a retry-forever loop never overflows
    rng = random.Random(7)
    assert len({policy.pause_s(2, rng.random()) for _ in range(20)}) == 20  # callers do not retry in step


def test_an_attempt_cap_counts_the_first_try():
    backoff = Retry(base_s=0.1, cap_s=1.0, attempts=3).backoff(unit=lambda: 0.0)
    assert backoff.next_pause() == pytest.approx(0.05)
    assert backoff.next_pause() == pytest.approx(0.1)
    assert backoff.next_pause() is None  # three tries made


def test_a_retry_is_made_only_if_its_pause_ends_with_enough_budget_left():
    clock = Clock()
    backoff = Retry(base_s=0.5, cap_s=4.0, deadline_s=3.0, jitter=0.0, min_attempt_s=0.25).backoff(clock=clock)
    clock.now += 1.0
    assert backoff.next_pause() == pytest.approx(0.5)  # 2.0 s left, 1.5 s after the pause
    clock.now += 0.5 + 0.5
    assert backoff.remaining_s == pytest.approx(1.0)
    assert backoff.next_pause() is None  # a 1.0 s pause would leave 0 s, less than min_attempt_s


def test_reset_after_a_success_starts_the_next_outage_from_the_base_pause_and_budget():
    clock = Clock()
    backoff = Retry(base_s=0.1, cap_s=1.0, deadline_s=5.0, jitter=0.0).backoff(clock=clock)
    for _ in range(4):
        backoff.next_pause()
    clock.now += 4.8
    backoff.reset()
    assert backoff.failures == 0 and backoff.remaining_s == pytest.approx(5.0)
    assert backoff.next_pause() == pytest.approx(0.1)


def test_the_hook_hears_each_retry_but_not_the_try_that_ends_the_run():
    heard: list[Retrying] = []
    backoff = Retry(base_s=0.1, cap_s=1.0, attempts=2, jitter=0.0).backoff(on_retry=heard.append)
    error = ConnectionError("refused")
    assert backoff.next_pause(error) == pytest.approx(0.1)
    assert backoff.next_pause(error) is None
    assert heard == [Retrying(1, pytest.approx(0.1), error)]


def test_an_invalid_policy_is_refused_when_it_is_written():
    for bad in ({"base_s": 0}, {"base_s": 2, "cap_s": 1}, {"attempts": 0}, {"deadline_s": 0}, {"jitter": 1.5}):
        with pytest.raises(ValueError):
            Retry(**bad)


async def test_attempts_retry_the_named_errors_and_stop_after_the_first_success():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    results = iter([OSError("1"), OSError("2"), "ok"])
    tries = 0
    async for attempt in Retry(base_s=0.1, cap_s=1.0, attempts=5, jitter=0.0).retrying(retry_on=OSError, sleep=sleep):
        with attempt:
            tries += 1
            value = next(results)
            if isinstance(value, Exception):
                raise value
    assert (tries, value, slept) == (3, "ok", pytest.approx([0.1, 0.2]))


async def test_attempts_raise_the_last_error_when_out_of_tries_and_never_swallow_others():
    async def sleep(seconds: float) -> None:
        pass

    policy = Retry(base_s=0.1, cap_s=1.0, attempts=2)
    with pytest.raises(OSError, match="second"):
        async for attempt in policy.retrying(retry_on=OSError, sleep=sleep):
            with attempt:
                raise OSError("first" if attempt.number == 1 else "second")
    with pytest.raises(KeyError):  # not named: a bug is not retried
        async for attempt in policy.retrying(retry_on=OSError, sleep=sleep):
            with attempt:
                raise KeyError("bug")


async def test_call_returns_the_value_of_the_first_successful_try():
    outcomes = [TimeoutError(), 42]

    async def flaky(offset: int) -> int:
        value = outcomes.pop(0)
        if isinstance(value, Exception):
            raise value
        return value + offset

    retried: list[Retrying] = []
    policy = Retry(base_s=0.001, cap_s=0.002, attempts=3)
    assert await policy.call(lambda: flaky(1), retry_on=TimeoutError, on_retry=retried.append) == 43
    assert [r.attempt for r in retried] == [1] and isinstance(retried[0].error, TimeoutError)


async def test_a_cancelled_try_is_never_retried():
    policy = Retry(base_s=0.001, cap_s=0.002, attempts=5)

    async def hang() -> None:
        await asyncio.sleep(60)

    task = asyncio.create_task(policy.call(hang, retry_on=BaseException))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
