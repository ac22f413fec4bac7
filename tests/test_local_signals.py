"""`switchboard-local` stops on a signal sent to its own pid, and a second one kills at once.

Real processes: the local run with its edge, workers, emulator and control, against the
test session's Redis on free ports. The pure parts (the signal counter, the stack the
arguments ask for) are tested without processes at the end.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from switchboard_dev import procs
from switchboard_dev.local import ForcedExit, StopSignals, _parse, build_stack

READY = "Press Ctrl-C to stop"


class LocalRun:
    """One `switchboard-local --no-demo-call`, its output read line by line as it comes."""

    def __init__(self, redis_url: str, log_dir: Path, *, sigint_ignored: bool = False) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN", "EDGE_PUBLIC_URL", "CONTROL_PUBLIC_URL")}
        env.update(REDIS_URL=redis_url, KEY_PREFIX="localsig:", PYTHONUNBUFFERED="1")
        ports = [str(procs.free_port()) for _ in range(3)]
        # A non-interactive shell starts a background job (`switchboard-local &`) with SIGINT
        # ignored; the child inherits that disposition.
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.proc = subprocess.Popen(
            [*procs.console("switchboard-local"), "--no-demo-call", "--edge-port", ports[0], "--control-port",
             ports[1], "--emulator-port", ports[2], "--log-dir", str(log_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s; output so far: {self.output}") from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {text!r}: {self.output}")
            self.output.append(line)
            if text in line:
                return

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def kill(self) -> None:
        for child in self.children():
            child.kill()
        self.proc.kill()
        self.proc.wait()


def gone(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` still running (a zombie counts as gone)."""
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture()
def local_run(redis_url, tmp_path):
    runs: list[LocalRun] = []

    def start(**options: bool) -> LocalRun:
        run = LocalRun(redis_url, tmp_path, **options)
        runs.append(run)
        run.wait_for(READY, 90)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.kill()


def test_a_sigint_sent_to_its_own_pid_stops_it_even_when_started_as_a_background_job(local_run):
    run = local_run(sigint_ignored=True)
    children = run.children()
    assert len(children) >= 5, children  # emulator, edge, two workers, control

    os.kill(run.proc.pid, signal.SIGINT)

    assert run.proc.wait(timeout=60) == 0
    run.wait_for("stopping", 5)
    assert gone(children) == [], "every process the local run started is stopped with it"


def test_a_second_signal_kills_everything_at_once_while_the_first_stop_is_stuck(local_run):
    run = local_run()
    children = run.children()
    # A worker that cannot act on SIGTERM: the clean stop would wait its 30 s for it.
    stuck = next(p for p in children if any("switchboard-worker" in part for part in p.cmdline()))
    stuck.suspend()

    os.kill(run.proc.pid, signal.SIGTERM)
    run.wait_for("stopping", 10)
    assert run.proc.poll() is None, "the first signal stops cleanly, waiting for every process"
    started = time.monotonic()
    os.kill(run.proc.pid, signal.SIGTERM)

    assert run.proc.wait(timeout=10) == 130
    assert time.monotonic() - started < 5
    run.wait_for("killing every process now", 5)
    assert gone(children) == [], "the stuck worker and every other process are killed"


# --- pure parts -----------------------------------------------------------------------------------
def test_the_first_stop_signal_interrupts_and_the_second_forces():
    signals = StopSignals()
    with pytest.raises(KeyboardInterrupt):
        signals.on_signal(signal.SIGINT)
    assert not signals.forced
    with pytest.raises(ForcedExit):
        signals.on_signal(signal.SIGTERM)
    assert signals.forced


def test_the_stack_follows_the_environment():
    args = _parse(["--workers", "3", "--edge-port", "18080", "--control-port", "18000"])
    plain = build_stack(args, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert plain.redis_url == "redis://127.0.0.1:1/0" and plain.deepgram_url == ""  # the emulator
    assert plain.workers == 3 and plain.control and plain.auth_token is None
    assert plain.control_env["EDGE_PUBLIC_URL"] == "ws://127.0.0.1:18080/twilio"

    real = build_stack(args, {"REDIS_URL": "redis://127.0.0.1:1/0", "DEEPGRAM_API_KEY": "dg-key",
                              "TWILIO_AUTH_TOKEN": "tw-token", "EDGE_PUBLIC_URL": "wss://edge.example/twilio",
                              "CONTROL_API_TOKEN": "c" * 20, "KEY_PREFIX": "mine:"})
    assert real.deepgram_url.startswith("wss://agent.deepgram.com") and real.deepgram_api_key == "dg-key"
    assert real.auth_token == "tw-token" and real.edge_env == {"EDGE_HOST": "0.0.0.0"}
    assert real.control_env["EDGE_PUBLIC_URL"] == "wss://edge.example/twilio"
    assert real.control_token == "c" * 20 and real.key_prefix == "mine:"
