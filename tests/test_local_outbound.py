"""`./dev run` without Twilio credentials dials out through the bundled Twilio REST emulator: the
README's outbound examples work against a plain local run (real processes, free ports)."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import httpx
import pytest

from test_local_signals import READY, LocalRun

pytestmark = pytest.mark.timeout(180)


def test_a_local_run_places_outbound_calls_through_the_bundled_twilio_emulator(redis_url, log_dir):
    run = LocalRun(redis_url, log_dir)
    try:
        run.wait_for("outbound calls go to the bundled Twilio REST emulator", 60)
        run.wait_for(READY, 60)
        text = "".join(run.output)
        base = re.search(r"Control API\s+: (http://\S+)", text)[1]
        token = re.search(r"Control API token : (\S+)", text)[1]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            sids = {}
            for number, expected in (("+14155550101", "completed"), ("+14155550103", "busy")):
                r = api.post("/v1/calls", json={"to": number, "context": {"name": "Ada"}})
                assert r.status_code == 201, r.text
                sids[r.json()["call_sid"]] = expected
            deadline = time.monotonic() + 60
            outcomes: dict[str, str | None] = {}
            while time.monotonic() < deadline and len([o for o in outcomes.values() if o]) < len(sids):
                outcomes = {sid: (api.get(f"/v1/calls/{sid}").json().get("outbound") or {}).get("outcome")
                            for sid in sids}
                time.sleep(0.25)  # another process: its state is polled
            assert outcomes == sids
            answered = next(sid for sid, outcome in sids.items() if outcome == "completed")
            assert [line["role"] for line in api.get(f"/v1/calls/{answered}").json()["transcript"]][:2] == \
                ["user", "assistant"]
    finally:
        run.proc.send_signal(signal.SIGINT)
        try:
            run.proc.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
