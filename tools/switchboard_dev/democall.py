"""The local run's demo call: one simulated call the way Twilio places it, then its transcript.

The call starts at the control API's voice webhook `POST /twiml`, like a real one, so it gets
the one-time stream token that the edge demands whenever `TWILIO_AUTH_TOKEN` is set. Both
requests are signed for the URLs the services verify: `CONTROL_PUBLIC_URL` + `/twiml` and the
TwiML's `<Stream url>` (`EDGE_PUBLIC_URL`), while the bytes go to the local ports, so the demo
works with the public URLs of a real number configured and no tunnel in the way.
"""

from __future__ import annotations

import time

import httpx

from switchboard import signature
from switchboard_callsim.call import CallResult, SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity, new_sid
from switchboard_callsim.twiml import Connect, TwimlError
from switchboard_callsim.twiml import parse as parse_twiml

from .stack import Stack


async def place(stack: Stack, *, turns: int, auth_token: str | None, control_public_url: str | None,
                synthetic: bool) -> CallResult:
    ident = CallIdentity.random()
    form = {"AccountSid": ident.account_sid, "CallSid": ident.call_sid, "From": "+14155550100",
            "To": "+14155550199", "CallStatus": "ringing", "Direction": "inbound"}
    signed_url = f"{(control_public_url or stack.control_url).rstrip('/')}/twiml"
    headers = {"X-Twilio-Signature": signature.compute(auth_token, signed_url, form)} if auth_token else {}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{stack.control_url}/twiml", data=form, headers=headers)
        response.raise_for_status()
        connect = next((v for v in parse_twiml(response.content).verbs if isinstance(v, Connect)), None)
    except (httpx.HTTPError, TwimlError) as exc:
        return CallResult(ident.call_sid, "", failure=f"POST /twiml failed: {exc}")
    if connect is None:
        return CallResult(ident.call_sid, "", failure=f"POST /twiml did not connect the call: {response.text}")
    call = CallIdentity(ident.account_sid, ident.call_sid, new_sid("MZ"), dict(connect.parameters))
    config = SimConfig(url=stack.edge_url, public_url=connect.url, auth_token=auth_token,
                       script=CallScript(turns=turns), synthetic=synthetic)
    return await run_call(config, call)


def report(stack: Stack, result: CallResult) -> None:
    """The transcript as the worker recorded it, turn latencies and the verdict."""
    if result.stream_sid:
        _print_transcript(stack, result.stream_sid)
    if result.turn_latencies_us:
        print("  turn latency (caller stops → agent audio arrives): "
              + ", ".join(f"{us / 1000:.0f} ms" for us in result.turn_latencies_us))
    verdict = "ok" if result.ok else f"FAILED ({result.failure})"
    print(f"  call {result.call_sid}: {verdict}; agent audio byte-exact: {result.byte_exact_out}")


def _print_transcript(stack: Stack, stream_sid: str) -> None:
    deadline = time.monotonic() + 5
    events: list[dict] = []
    while time.monotonic() < deadline:  # the worker writes call_ended a moment after the caller hangs up
        events = stack.events(stream_sid)
        if any(event.get("type") == "call_ended" for event in events):
            break
        time.sleep(0.1)
    print("  transcript:")
    for event in events:
        if line := _transcript_line(event):
            print(line)


def _transcript_line(event: dict) -> str | None:
    kind = event.get("type")
    if kind == "transcript":
        return f"    {event['role']:>9}: {event['content']}"
    if kind in ("barge_in", "error"):
        code = f": {event['code']}" if event.get("code") else ""
        return f"    {'':>9}  [{kind}{code}]"
    if kind == "reply_heard" and event.get("interrupted"):
        return (f"    {'':>9}  [the caller heard {event['heard_ms']} of {event['audio_ms']} ms: "
                f"\"{event['heard_text']}\"]")
    if kind == "turn_latency" and "switchboard_ms" in event:
        stages = event["stages"]
        return (f"    {'':>9}  [turn {event['reply']}: Switchboard {event['switchboard_ms']:.1f} ms "
                f"(in {stages.get('caller_to_deepgram', 0):.1f}, out {stages.get('worker_to_edge', 0):.1f}); "
                f"Deepgram {stages.get('deepgram_total', 0):.0f} ms]")
    return None
