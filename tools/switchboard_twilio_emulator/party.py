"""The party on the line of an answered call: who talks on its streams, and what came of it.

A person runs the simulator's `Conversation` with its callee script; a voicemail or a fax
runs a `Machine` whose clock started at the answer (its greeting does not wait for the
stream). After the call, `report` turns the simulator's result into the call's report;
`check_caller_audio` asks the Deepgram emulator whether it got the party's audio byte for byte.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from switchboard_callsim.emucheck import caller_audio_verdict
from switchboard_callsim.leg import CallerLeg
from switchboard_callsim.machine import Machine, MachineScript
from switchboard_callsim.playback import Playback
from switchboard_callsim.script import Conversation
from switchboard_callsim.twiliomsg import CallIdentity

from .callees import Callee
from .config import EmulatorConfig
from .resources import CallRecord


def leg_for(rec: CallRecord, callee: Callee, config: EmulatorConfig, auth_token: str) -> CallerLeg:
    """The line of the call `rec`, answered by `callee`; its streams are signed with `auth_token`."""
    answered_us = int((rec.answered_at or time.time()) * 1_000_000)
    if callee.kind == "person":
        def party(playback: Playback, start_us: int) -> Any:
            return Conversation(callee.script, playback, start_us, config.synthetic_audio)
    else:
        m = callee.machine
        machine = m if callee.kind == "voicemail" else MachineScript(m.lead_ms, m.greeting_ms, 0, 0, m.record_ms)

        def party(playback: Playback, start_us: int) -> Any:
            return Machine(machine, playback, answered_us)  # its greeting started at the answer
    ident = CallIdentity(rec.account_sid, rec.sid, "MZ" + "0" * 32)  # each stream gets its own sid
    return CallerLeg(ident, party, script=callee.script, auth_token=auth_token,
                     synthetic=config.synthetic_audio, connect_timeout_s=config.stream_connect_timeout_s)


def report(leg: CallerLeg | None) -> dict[str, Any] | None:
    if leg is None:
        return None
    result = leg.result()
    data: dict[str, Any] = {
        "streams": [s.to_json() for s in leg.segments],
        "failure": result.failure,
        "turns_completed": result.turns_completed,
        "turn_latencies_ms": [round(v / 1000, 1) for v in result.turn_latencies_us],
        "barge_in_latencies_ms": [round(v / 1000, 1) for v in result.barge_in_latencies_us],
        "byte_exact_out": result.byte_exact_out,
        "out_reasons": result.out_reasons,
        "byte_exact_in": None,
        "in_reasons": [],
        "agent_frames": result.agent_frames,
        "received_audio_bytes": result.received_audio_bytes,
        "sent_audio_bytes": result.sent_audio_bytes,
        "sent_audio_sha256": result.sent_audio_sha256,
        "marks_echoed": result.marks_echoed,
        "clears": result.clears,
        "heard_at_clear_ms": result.heard_at_clear_ms,
        "warnings": {str(code): n for code, n in result.warnings.items()},
        "warning_reasons": result.warning_reasons,
    }
    if isinstance(leg.conversation, Machine):
        data["machine"] = leg.conversation.report()
    return data


async def check_caller_audio(http: httpx.AsyncClient, config: EmulatorConfig, call_sid: str,
                             data: dict[str, Any] | None) -> None:
    """Fill the report's `byte_exact_in` and `in_reasons` (when a Deepgram emulator is configured)."""
    url = config.deepgram_emulator_url
    if url and data is not None and data["sent_audio_bytes"]:
        data["byte_exact_in"], data["in_reasons"] = await caller_audio_verdict(
            http, url, call_sid, data["sent_audio_bytes"], data["sent_audio_sha256"])
