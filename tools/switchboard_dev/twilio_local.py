"""`./dev run` without Twilio credentials: the bundled Twilio REST emulator takes Twilio's part for
outbound calls, so `POST /v1/calls` and campaigns work on one machine.

When TWILIO_ACCOUNT_SID is unset, control gets outbound calls turned on (OUTBOUND_ENABLED,
OUTBOUND_ALLOW=+1, OUTBOUND_DEFAULT_FROM) and the emulator's API as Twilio's (an API key of its
own), and the emulator is started next to the stack: it calls back on CONTROL_PUBLIC_URL (the
local control API unless set) and streams its scripted callees to the edge. Its callees:

    +14155550101 and any other number   a person (says two things, listens, hangs up)
    +14155550102                        an answering machine (greeting, beep, records)
    +14155550103                        busy
    +14155550104                        no answer
    +14155550105                        fails (SIP 503)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from . import procs
from .stack import Stack

PORT = 8766
ACCOUNT_SID = "AC" + "0" * 31 + "1"  # the emulator's default account
KEY_SID = "SK" + "0" * 31 + "1"
KEY_SECRET = "local-emulator-key-secret"
DEFAULT_TOKEN = "emulator-auth-token"
FROM = "+14155550100"
CALLEES = {
    "+14155550101": {"kind": "person", "ring_s": 1, "script": {"turns": 2, "lead_ms": 2500}},
    "+14155550102": {"kind": "voicemail", "ring_s": 1},
    "+14155550103": {"kind": "busy", "ring_s": 1},
    "+14155550104": {"kind": "no_answer"},
    "+14155550105": {"kind": "failed", "ring_s": 0.5, "sip_code": 503},
}
MARKER = "SWITCHBOARD_LOCAL_TWILIO_EMULATOR"  # control env entry: the port the emulator is to run on


def emulated(environ: Mapping[str, str]) -> bool:
    return not environ.get("TWILIO_ACCOUNT_SID")


def control_env(environ: Mapping[str, str], control_port: int) -> dict[str, str]:
    """What control needs to dial through the emulator (the environment's own values win)."""
    port = PORT if not procs.port_open("127.0.0.1", PORT) else procs.free_port()
    env = {
        "OUTBOUND_ENABLED": "true", "OUTBOUND_ALLOW": "+1", "OUTBOUND_DEFAULT_FROM": FROM,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_KEY_SID": KEY_SID, "TWILIO_API_KEY_SECRET": KEY_SECRET,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{port}",
        "CONTROL_PUBLIC_URL": f"http://127.0.0.1:{control_port}",
        MARKER: str(port),
    }
    return {name: environ.get(name, value) if name != MARKER else value for name, value in env.items()}


def worker_env(environ: Mapping[str, str], control_env: Mapping[str, str]) -> dict[str, str]:
    """What workers need to transfer calls through the emulator: its API, and where its callbacks go."""
    if MARKER not in control_env:
        return {}
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": environ.get("TWILIO_AUTH_TOKEN") or DEFAULT_TOKEN,
           "TWILIO_API_BASE_URL": control_env["TWILIO_API_BASE_URL"],
           "CONTROL_PUBLIC_URL": control_env["CONTROL_PUBLIC_URL"]}
    return {name: environ.get(name, value) for name, value in env.items()}


def start(stack: Stack, environ: Mapping[str, str]) -> procs.Service | None:
    """Start the emulator if `control_env` asked for one; it signs with TWILIO_AUTH_TOKEN when set."""
    port = stack.control_env.get(MARKER)
    if port is None:
        return None
    argv = [sys.executable, "-m", "switchboard_twilio_emulator", "--host", "127.0.0.1", "--port", port,
            "--auth-token", environ.get("TWILIO_AUTH_TOKEN") or DEFAULT_TOKEN, "--api-keys", f"{KEY_SID}:{KEY_SECRET}",
            "--cps", "10"]
    for number, callee in CALLEES.items():
        argv += ["--callee", f"{number}={json.dumps(callee)}"]
    if stack.emulator is not None:
        argv += ["--deepgram-emulator-url", stack.emulator_http]
    return stack.run("twilio", procs.Service(f"twilio-emulator-{port}", argv, {},
                                             health_url=f"http://127.0.0.1:{port}/_emulator/healthz"))
