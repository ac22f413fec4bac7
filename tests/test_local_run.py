"""The README's run command: `./dev run` is `switchboard-local`; one call end to end, then exit."""

from __future__ import annotations

import os
import subprocess

from switchboard_dev import procs


def test_the_run_command_places_a_call_and_reports_it(redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN", "EDGE_PUBLIC_URL")}
    # The test's private Redis and free ports, so that it never touches a user's running system.
    env.update(REDIS_URL=redis_url, KEY_PREFIX="localrun:")
    ports = [str(procs.free_port()) for _ in range(3)]
    run = subprocess.run(
        [*procs.console("switchboard-local"), "--exit-after-call", "--edge-port", ports[0], "--control-port", ports[1],
         "--emulator-port", ports[2], "--log-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    out = run.stdout
    assert run.returncode == 0, (out, run.stderr[-2000:])
    assert "using the bundled Deepgram emulator" in out
    assert "assistant: Agent reply 2 to caller utterance 2." in out
    assert "[turn 1: Switchboard" in out and "Deepgram" in out
    assert "ok; agent audio byte-exact: True" in out
