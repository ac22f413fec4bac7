"""Place N outbound calls through the emulator's REST API, as a dialler would, and collect the results.

    switchboard-twilio-emulator place --api http://127.0.0.1:8766 --to +14155550101 --to +14155550102 \\
        --from +14155550100 --url http://127.0.0.1:8000/twiml --count 20 --cps 2 --concurrency 5 --json out.json

Calls are created with at least 1/cps seconds between two creations (measured when each
request is sent, so a call that waited for a free concurrency slot does not burst) and at
most `concurrency` live at once (a call is live until the emulator says it ended), cycling
through the `--to` numbers. A 429 is retried
after its Retry-After (or 1 s), a few times. Each call's outcome comes from the emulator's
own record (`/_emulator/calls/{sid}?wait=report`): status, AMD verdict, duration, and the
party's stream results (turns, byte-exact flags, what a voicemail recorded). The report
adds the pace and concurrency the emulator measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from .config import TEST_ACCOUNT_SID

MAX_429_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Campaign:
    api: str
    to: tuple[str, ...]
    from_: str
    url: str | None = None
    twiml: str | None = None
    count: int = 1
    cps: float = 1.0
    concurrency: int = 1
    account_sid: str = TEST_ACCOUNT_SID
    username: str | None = None  # default: the account SID
    password: str = "emulator-auth-token"
    status_callback: str | None = None
    machine_detection: str | None = None
    async_amd_callback: str | None = None
    timeout_s: int = 60
    wait_s: float = 300.0  # longest a single call may take


@dataclass(slots=True)
class CampaignReport:
    calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        outcomes = Counter(c.get("status") for c in self.calls)
        answered_by = Counter(c.get("answered_by") for c in self.calls if c.get("answered_by"))
        return {
            "placed": len(self.calls),
            "refused": len(self.errors),
            "outcomes": dict(outcomes),
            "answered_by": dict(answered_by),
            "errors": self.errors,
            "emulator": self.stats,
            "wall_s": round(self.wall_s, 3),
            "calls": self.calls,
        }


def _summary(detail: dict[str, Any]) -> dict[str, Any]:
    report = detail.get("report") or {}
    return {
        "sid": detail["sid"], "to": detail["to"], "status": detail["status"], "answered_by": detail["answered_by"],
        "end_reason": detail["end_reason"], "duration": detail["resource"]["duration"],
        "queue_time_ms": detail["resource"]["queue_time"], "amd": detail.get("amd"),
        "turns_completed": report.get("turns_completed"), "byte_exact_out": report.get("byte_exact_out"),
        "byte_exact_in": report.get("byte_exact_in"), "machine": report.get("machine"),
        "streams": len(report.get("streams", [])), "heard": [h.get("say") or h.get("play") for h in detail["heard"]],
    }


async def run_campaign(c: Campaign) -> CampaignReport:
    loop = asyncio.get_running_loop()
    report = CampaignReport()
    gate = asyncio.Semaphore(c.concurrency)
    pace = asyncio.Lock()
    last_sent = [-float("inf")]
    started = loop.time()

    async def my_turn() -> None:
        # Spacing taken from the actual send times: a schedule fixed in advance would let a call
        # that waited for the gate go out right behind the one before it.
        async with pace:
            delay = last_sent[0] + 1 / c.cps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            last_sent[0] = loop.time()
    auth = (c.username or c.account_sid, c.password)
    form: list[tuple[str, str]] = [("From", c.from_), ("Timeout", str(c.timeout_s))]
    form += [("Url", c.url)] if c.url else [("Twiml", c.twiml or "<Response><Hangup/></Response>")]
    if c.status_callback:
        form += [("StatusCallback", c.status_callback)]
        form += [("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed")]
    if c.machine_detection:
        form += [("MachineDetection", c.machine_detection)]
        if c.async_amd_callback:
            form += [("AsyncAmd", "true"), ("AsyncAmdStatusCallback", c.async_amd_callback)]
    api = c.api.rstrip("/")

    async def one(i: int, http: httpx.AsyncClient) -> None:
        to = c.to[i % len(c.to)]
        async with gate:
            for _ in range(MAX_429_RETRIES + 1):
                await my_turn()
                body: dict[str, list[str]] = {"To": [to]}
                for name, value in form:  # repeated names (StatusCallbackEvent) become lists
                    body.setdefault(name, []).append(value)
                response = await http.post(f"{api}/2010-04-01/Accounts/{c.account_sid}/Calls.json",
                                           data=body, auth=auth)
                if response.status_code != 429:
                    break
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            if response.status_code != 201:
                is_json = response.headers.get("content-type", "").startswith("application/json")
                error = response.json() if is_json else {}
                report.errors.append({"to": to, "status": response.status_code, "code": error.get("code"),
                                      "message": error.get("message")})
                return
            sid = response.json()["sid"]
            waited = await http.get(f"{api}/_emulator/calls/{sid}",
                                    params={"wait": "report", "timeout_s": str(c.wait_s)}, timeout=c.wait_s + 10)
            report.calls.append(_summary(waited.json()))

    async with httpx.AsyncClient(timeout=30) as http:
        async with asyncio.TaskGroup() as tg:
            for i in range(c.count):
                tg.create_task(one(i, http))
        report.stats = (await http.get(f"{api}/_emulator/stats")).json()
    report.wall_s = loop.time() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="switchboard-twilio-emulator place", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--api", default="http://127.0.0.1:8766", help="the emulator's base URL")
    a("--to", action="append", required=True, help="a destination (repeat; calls cycle through them)")
    a("--from", dest="from_", required=True)
    a("--url", help="TwiML URL (or --twiml)")
    a("--twiml")
    a("--count", type=int, default=1)
    a("--cps", type=float, default=1.0)
    a("--concurrency", type=int, default=1)
    a("--account-sid", default=os.environ.get("TWILIO_ACCOUNT_SID", TEST_ACCOUNT_SID))
    a("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN", "emulator-auth-token"))
    a("--status-callback")
    a("--machine-detection", choices=("Enable", "DetectMessageEnd"))
    a("--async-amd-callback")
    a("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    if args.count < 1 or args.concurrency < 1 or args.cps <= 0:
        p.error("--count and --concurrency must be >= 1, --cps > 0")
    campaign = Campaign(args.api, tuple(args.to), args.from_, args.url, args.twiml, args.count, args.cps,
                        args.concurrency, args.account_sid, None, args.auth_token, args.status_callback,
                        args.machine_detection, args.async_amd_callback)
    data = asyncio.run(run_campaign(campaign)).to_dict()
    if args.json:
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    summary = {k: data[k] for k in ("placed", "refused", "outcomes", "answered_by", "wall_s")}
    print(orjson.dumps({**summary, "emulator": data["emulator"]}, option=orjson.OPT_INDENT_2).decode())
    return 1 if data["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
