"""Shared service plumbing: supervised loops, best-effort bookkeeping, the two-signal shutdown."""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from switchboard.besteffort import Outage, best_effort
from switchboard.runtime import Shutdown
from switchboard.supervise import TASK_FAILURES, Supervisor


class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


# --- supervised loops ----------------------------------------------------------------------------
async def test_a_loop_that_raises_is_logged_with_its_traceback_fails_readiness_and_requests_the_stop(caplog):
    tasks = Supervisor("test-svc")
    before = TASK_FAILURES.labels("test-svc", "refresher")._value.get()

    async def refresher() -> None:
        await asyncio.sleep(0)
        raise KeyError("bug")

    async def healthy() -> None:
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR, logger="switchboard.supervise"):
        tasks.spawn(refresher(), name="refresher")
        tasks.spawn(healthy(), name="healthy")
        await asyncio.wait_for(tasks.failed.wait(), 5)
    assert not tasks.ok
    assert tasks.readiness_detail() == {"failed_tasks": {"refresher": "KeyError: 'bug'"}}
    assert TASK_FAILURES.labels("test-svc", "refresher")._value.get() == before + 1
    (record,) = [r for r in caplog.records if "refresher" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError  # the traceback, not just a line
    await tasks.aclose()


async def test_a_loop_that_returns_before_shutdown_is_a_failure_but_not_after_closing_began():
    tasks = Supervisor("test-svc")

    async def returns() -> None:
        await asyncio.sleep(0)

    tasks.spawn(returns(), name="early")
    await asyncio.wait_for(tasks.failed.wait(), 5)
    assert tasks.failures == {"early": "returned before shutdown"}

    calm = Supervisor("test-svc")
    calm.closing()
    await calm.spawn(returns(), name="late")
    await asyncio.sleep(0)
    assert calm.ok and not calm.failed.is_set()


async def test_cancelling_the_loops_at_shutdown_is_not_a_failure_and_names_cannot_be_reused_while_running():
    tasks = Supervisor("test-svc")
    tasks.spawn(asyncio.sleep(3600), name="sleeper")
    with pytest.raises(ValueError, match="sleeper"):
        tasks.spawn(asyncio.sleep(3600), name="sleeper")
    await tasks.aclose()
    assert tasks.ok and tasks.readiness_detail() == {}


# --- best-effort bookkeeping ---------------------------------------------------------------------
async def test_a_redis_error_in_bookkeeping_is_counted_and_logged_but_never_raised(caplog):
    errors = Count()
    with caplog.at_level(logging.WARNING, logger="switchboard.besteffort"):
        async with best_effort("record the barge-in", errors=errors, extra={"call_sid": "CA1"}) as attempt:
            raise RedisConnectionError("refused")
    assert attempt.failed and errors.value == 1
    (record,) = caplog.records
    assert record.getMessage() == "could not record the barge-in: refused" and record.call_sid == "CA1"

    with pytest.raises(KeyError), best_effort("anything", errors=errors):  # a bug is not bookkeeping
        raise KeyError("bug")
    assert errors.value == 1


async def test_a_repeated_block_logs_the_first_failure_of_an_outage_and_the_recovery_but_counts_every_failure(caplog):
    errors, outage = Count(), Outage()
    with caplog.at_level(logging.INFO, logger="switchboard.besteffort"):
        for _ in range(5):
            async with best_effort("read the fleet", errors=errors, outage=outage):
                raise RedisConnectionError("down")
        async with best_effort("read the fleet", errors=errors, outage=outage) as attempt:
            pass
    assert errors.value == 5 and not attempt.failed
    assert [r.getMessage() for r in caplog.records] == ["could not read the fleet: down",
                                                        "read the fleet: Redis answers again"]


# --- shutdown ----------------------------------------------------------------------------------
async def test_shutdown_ends_on_a_request_or_on_a_supervisor_s_failure_and_keeps_the_first_reason():
    stop = Shutdown("test", install=False)
    failed = asyncio.Event()
    waiting = asyncio.create_task(stop.wait(failed))
    await asyncio.sleep(0)
    failed.set()
    assert await asyncio.wait_for(waiting, 5) == "a background task failed"

    stop = Shutdown("test", install=False)
    stop.on_signal(signal.SIGTERM)
    assert await stop.wait(failed) == "SIGTERM received"


_SLOW_DRAIN = textwrap.dedent("""
    import asyncio, sys
    from switchboard.runtime import Shutdown

    async def main():
        stop = Shutdown("slowpoke")
        print("ready", flush=True)
        await stop.wait()
        print("draining", flush=True)
        await asyncio.sleep(60)  # a drain stuck behind a dead peer

    asyncio.run(main())
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_a_slow_drain_exits_at_once_with_128_plus_the_signal(signum):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_DRAIN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
        assert proc.stdout.readline().strip() == "draining"
        time.sleep(0.3)
        assert proc.poll() is None  # the first signal drains: the process waits for its drain
        sent = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(5) == 128 + signum
        assert time.monotonic() - sent < 2
        assert "exiting now, without draining" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
