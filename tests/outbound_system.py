"""A whole Switchboard that dials out, for end-to-end tests: the stack (Deepgram emulator, edge,
workers, control with outbound calls on) plus the Twilio REST emulator as its own process.

Everything is real: control creates calls over HTTP at the emulator's Calls API (API-key Basic
auth), the emulator sends signed status and AMD callbacks to control's public URL and, once a
call is answered, fetches control's TwiML and streams the scripted callee over a real WebSocket
to the edge (which checks Twilio's signature and the one-time stream token). Tests talk to
both over HTTP: control's API and the emulator's admin API (`/_emulator/…`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync

from switchboard_dev import procs
from switchboard_dev.stack import Stack

from system import EMULATOR_KEY, FAST_EMULATOR

TWILIO_TOKEN = "outbound-test-twilio-token"
ACCOUNT_SID = "AC" + "0" * 31 + "1"  # the emulator's account
KEY_SID, KEY_SECRET = "SK" + "4" * 32, "outbound-test-key-secret"
API_TOKEN = "outbound-test-api-token-0123456789"
FUNCTION_SECRET = "outbound-test-function-secret"
FROM = "+14155550100"
PERSON = {"kind": "person", "ring_s": 0.2,
          "script": {"turns": 1, "utterance_ms": 600, "lead_ms": 400, "reply_timeout_ms": 6000, "hold_ms": 200}}


@dataclass
class OutboundSystem:
    redis_url: str
    prefix: str
    log_dir: Path
    workers: int = 1
    capacity: int = 12
    control_env: dict[str, str] = field(default_factory=dict)
    twilio_args: tuple[str, ...] = ()

    def start(self) -> OutboundSystem:
        self.edge_port, self.control_port, self.twilio_port = procs.free_port(), procs.free_port(), procs.free_port()
        self.twilio_url = f"http://127.0.0.1:{self.twilio_port}"
        env = {
            "CONTROL_PUBLIC_URL": f"http://127.0.0.1:{self.control_port}",
            "OUTBOUND_ENABLED": "true", "OUTBOUND_ALLOW": "+1", "OUTBOUND_DEFAULT_FROM": FROM,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_KEY_SID": KEY_SID, "TWILIO_API_KEY_SECRET": KEY_SECRET,
            "TWILIO_API_BASE_URL": self.twilio_url, "FUNCTION_SECRET": FUNCTION_SECRET,
            "CONTROL_EGRESS_ALLOW": "127.0.0.1", "CONTROL_EGRESS_ALLOW_HTTP": "true", "OUTBOUND_CHECK_S": "2",
            "CONTROL_PUBLIC_DOCS": "true", **self.control_env,
        }
        self.stack = Stack(
            log_dir=self.log_dir, key_prefix=self.prefix, redis_url=self.redis_url, deepgram_api_key=EMULATOR_KEY,
            emulator_args=FAST_EMULATOR, edge_port=self.edge_port, auth_token=TWILIO_TOKEN,
            edge_env={"EDGE_PUBLIC_URL": f"ws://127.0.0.1:{self.edge_port}/twilio"}, workers=self.workers,
            capacity=self.capacity, worker_id_format=self.prefix.replace("{", "{{").replace("}", "}}") + "w{n}",
            worker_env={"LEASE_MS": "1500"}, control=True, control_port=self.control_port, control_token=API_TOKEN,
            control_env=env, stop_timeout_s=15,
        ).start()
        argv = [sys.executable, "-m", "switchboard_twilio_emulator", "--host", "127.0.0.1",
                "--port", str(self.twilio_port), "--auth-token", TWILIO_TOKEN, "--api-keys", f"{KEY_SID}:{KEY_SECRET}",
                "--setup-ms", "20", "--say-ms-per-char", "2", "--cps", "50", "--log-level", "WARNING",
                "--deepgram-emulator-url", self.stack.emulator_http, *self.twilio_args]
        self.twilio = self.stack.run("twilio", procs.Service(f"twilio-emulator-{self.twilio_port}", argv, {},
                                                            health_url=f"{self.twilio_url}/_emulator/healthz"))
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.control_port}", timeout=30,
                                headers={"Authorization": f"Bearer {API_TOKEN}"})
        self.emulator = httpx.Client(base_url=self.twilio_url, timeout=60)
        return self

    def stop(self) -> None:
        self.api.close()
        self.emulator.close()
        self.stack.stop()

    # --- control ----------------------------------------------------------------------------------
    def place(self, to: str, **body: Any) -> httpx.Response:
        return self.api.post("/v1/calls", json={"to": to, **body})

    def profile(self, name: str, settings: dict[str, Any]) -> None:
        r = self.api.put(f"/v1/profiles/{name}", json=settings)
        assert r.status_code == 200, r.text

    def call(self, call_sid: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/calls/{call_sid}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_outcome(self, call_sid: str, timeout: float = 30) -> dict[str, Any]:
        """The call detail once its outbound part has an outcome (Twilio's final status applied)."""
        deadline = time.monotonic() + timeout
        while True:
            detail = self.call(call_sid)
            if (detail.get("outbound") or {}).get("outcome"):
                return detail
            if time.monotonic() > deadline:
                raise AssertionError(f"call {call_sid} has no outcome after {timeout} s: {detail}")
            time.sleep(0.1)  # control is another process: nothing to await across it but its state

    def metric(self, name: str, labels: str = "") -> float:
        text = self.api.get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {" and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def redis(self) -> redis_sync.Redis:
        return self.stack.client()

    # --- the Twilio emulator ------------------------------------------------------------------------
    def callee(self, number: str, spec: dict[str, Any], *, once: bool = False) -> None:
        path = f"/_emulator/callees/{number}" + ("/next" if once else "")
        r = (self.emulator.post if once else self.emulator.put)(path, json=spec)
        assert r.status_code in (200, 201), r.text

    def emulated_call(self, call_sid: str, wait: str = "report", timeout: float = 40) -> dict[str, Any]:
        r = self.emulator.get(f"/_emulator/calls/{call_sid}", params={"wait": wait, "timeout_s": timeout},
                              timeout=timeout + 10)
        assert r.status_code == 200, r.text
        return r.json()

    def creates(self, since: int = 0) -> list[dict[str, Any]]:
        r = self.emulator.get("/_emulator/requests", params={"since": since, "endpoint": "calls"})
        return [e for e in r.json()["requests"] if e["method"] == "POST" and e["path"].endswith("/Calls.json")]

    def stats(self) -> dict[str, Any]:
        return self.emulator.get("/_emulator/stats").json()

    def deepgram_sessions(self, call_sid: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.stack.emulator_http}/_emulator/sessions", params={"tag": f"callsid:{call_sid}"})
        return r.json()
