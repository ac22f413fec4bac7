"""`switchboard-callsim`: place simulated Twilio calls against an edge and report.

Exit status: 0 if every call completed, 1 if any failed (or, with --require-byte-exact,
if any audio check came back false), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from switchboard import logs, runtime

from .call import SimConfig
from .load import run_load
from .script import CallScript


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def _dtmf(text: str) -> tuple[int, str]:
    digit, sep, at = text.partition("@")
    if not sep or len(digit) != 1 or digit not in "0123456789*#" or not at.isdigit():
        raise argparse.ArgumentTypeError(f"expected DIGIT@MS, got {text!r}")
    return int(at), digit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="switchboard-callsim", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--url", default="ws://127.0.0.1:8080/twilio", help="edge WebSocket URL to connect to")
    a("--twiml-url", help="start like Twilio: POST this voice webhook and run its TwiML (then --url is unused)")
    a("--public-url", help="URL to sign (what Twilio's TwiML names); default: --url")
    a("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"), help="sign the upgrade (env TWILIO_AUTH_TOKEN)")
    a("--param", type=_param, action="append", default=[], metavar="K=V", help="customParameters entry (repeat)")
    a("--calls", type=int, default=1)
    a("--concurrency", type=int, help="calls at once (default: all)")
    a("--ramp-ms", type=int, default=0, help="spread call starts over this time")
    a("--turns", type=int, default=1)
    a("--utterance-ms", type=int, default=1200)
    a("--lead-ms", type=int, default=1500, help="silence before the first turn")
    a("--gap-ms", type=int, default=300, help="silence after a reply finished playing")
    a("--reply-timeout-ms", type=int, default=8000)
    a("--reply-quiet-ms", type=int, default=200, help="idle playback this long = reply finished")
    a("--barge-in", action="store_true", help="start the next turn while the reply plays")
    a("--barge-in-after-ms", type=int, default=400)
    a("--hold-ms", type=int, default=0, help="silence after the last reply, before hanging up")
    a("--dtmf", type=_dtmf, action="append", default=[], metavar="DIGIT@MS", help="send a dtmf event (repeat)")
    a("--emulator-url", help="Deepgram emulator base URL, to check caller audio byte for byte")
    a("--real-audio", action="store_true", help="agent audio is not synthetic: skip frame checks")
    a("--require-byte-exact", action="store_true", help="exit 1 if any audio check is false")
    a("--connect-timeout-s", type=float, default=10.0)
    a("--json", type=Path, help="write the machine-readable report here")
    a("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if args.calls < 1 or (args.concurrency is not None and args.concurrency < 1) or args.turns < 1:
        p.error("--calls, --concurrency and --turns must be >= 1")
    return args


def build_config(args: argparse.Namespace) -> SimConfig:
    script = CallScript(
        turns=args.turns,
        utterance_ms=args.utterance_ms,
        lead_ms=args.lead_ms,
        gap_ms=args.gap_ms,
        reply_timeout_ms=args.reply_timeout_ms,
        reply_quiet_ms=args.reply_quiet_ms,
        barge_in=args.barge_in,
        barge_in_after_ms=args.barge_in_after_ms,
        hold_ms=args.hold_ms,
        dtmf=tuple(sorted(args.dtmf)),
    )
    return SimConfig(
        url=args.url,
        public_url=args.public_url,
        auth_token=args.auth_token,
        calls=args.calls,
        concurrency=args.concurrency,
        ramp_ms=args.ramp_ms,
        script=script,
        params=dict(args.param),
        emulator_url=args.emulator_url,
        synthetic=not args.real_audio,
        connect_timeout_s=args.connect_timeout_s,
        twiml_url=args.twiml_url,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup("callsim", args.log_level)
    runtime.install_event_loop()  # uvloop: the simulator must stay cheap beside the system under test
    report = asyncio.run(run_load(build_config(args)))
    print(report.format_table())
    data = report.to_dict()
    if args.json:
        import orjson

        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    bad_audio = data["byte_exact_out"]["false"] + data["byte_exact_in"]["false"]
    return 1 if report.failed or (args.require_byte_exact and bad_audio) else 0


if __name__ == "__main__":
    sys.exit(main())
