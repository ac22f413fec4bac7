"""The called (or calling) party of one call whose TwiML another program runs: the Twilio REST emulator.

`run_call` plays Twilio *and* runs the TwiML; the REST emulator runs the TwiML itself and
needs only the party on the line: one stream per `<Connect><Stream>`, one conversation (a
person's `Conversation` or a `Machine`) across all of them, and a way for "Twilio" to end a
stream (a redirect or a REST hang-up) with the `stop` message Twilio sends. Between streams
the party is on hold: a person's deadlines wait (`hold`/`resume`), a machine's clock runs on.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .call import CallResult, Pacer, SimConfig, _Call
from .playback import Playback
from .script import CallScript
from .twiliomsg import CallIdentity

# (playback, start_us) -> the party's script: a script.Conversation or a machine.Machine.
PartyFactory = Callable[[Playback, int], Any]


class StreamEnd(enum.Enum):
    HANGUP = "hangup"  # the party's script is over: it hung up (Twilio ends the call)
    SERVER_CLOSED = "server-closed"  # the WebSocket server closed it: Twilio runs the next verb
    STOPPED = "stopped"  # "Twilio" ended it (stop()): a REST redirect or hang-up
    FAILED = "failed"  # could not connect, or broke: Twilio runs the next verb


@dataclass(slots=True)
class StreamSegment:
    stream_sid: str
    url: str
    parameters: dict[str, str]
    started_at: float
    ended_at: float = 0.0
    end: StreamEnd = StreamEnd.FAILED
    failure: str | None = None
    # When the agent audio queued on this stream had (or would have) finished playing, and how
    # much of it was still unplayed when the stream ended: a redirect that cut the agent's last
    # sentence shows here (unplayed_ms > 0).
    agent_audio_until: float | None = None
    unplayed_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "stream_sid": self.stream_sid,
            "url": self.url,
            "parameters": self.parameters,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end": self.end.value,
            "failure": self.failure,
            "agent_audio_until": self.agent_audio_until,
            "unplayed_ms": self.unplayed_ms,
        }


@dataclass(slots=True)
class CallerLeg:
    """`async with Pacer() as pacer: await leg.stream(pacer, url, params)`; `leg.stop()` from elsewhere."""

    ident: CallIdentity
    party: PartyFactory
    script: CallScript = field(default_factory=CallScript)  # its `dtmf` is keyed in on the streams
    auth_token: str | None = None
    synthetic: bool = True
    connect_timeout_s: float = 10.0
    segments: list[StreamSegment] = field(default_factory=list)
    _call: _Call = field(init=False)
    _result: CallResult | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        config = SimConfig(script=self.script, auth_token=self.auth_token, synthetic=self.synthetic,
                           connect_timeout_s=self.connect_timeout_s)
        self._call = _Call(config, self.ident)

    @property
    def hung_up(self) -> bool:
        return self._call.hung_up

    @property
    def conversation(self) -> Any:
        return self._call.conv

    async def stream(self, pacer: Pacer, url: str, parameters: dict[str, str],
                     on_open: Callable[[StreamSegment], None] | None = None) -> StreamSegment:
        """One `<Connect><Stream>`: open it, let the party talk until someone ends it.

        `on_open` learns the new streamSid before the socket opens (Twilio's stream-started).
        """
        call = self._call
        call._new_stream(parameters)
        now_us = time.time_ns() // 1000
        if call.conv is None:  # the party starts when its first stream opens
            call.conv = self.party(call.playback, now_us)
        else:
            call.conv.playback = call.playback
            call.conv.resume(now_us)
        segment = StreamSegment(call.out.ident.stream_sid, url, dict(parameters), time.time())
        self.segments.append(segment)
        call.result.streams.append(segment.stream_sid)
        if on_open is not None:
            on_open(segment)
        failure_before = call.result.failure
        await call._stream(pacer, url, signed_url=url)  # Twilio signs the <Stream url> exactly as written
        segment.ended_at = time.time()
        play_end_us = call.playback.play_end_us
        if play_end_us:
            segment.agent_audio_until = play_end_us / 1_000_000
            segment.unplayed_ms = max(0, round((segment.agent_audio_until - segment.ended_at) * 1000))
        if call.result.failure is not None and call.result.failure != failure_before:
            segment.failure = call.result.failure
            # A failed stream is this segment's story; the party may still talk on the next one.
            if not call.hung_up:
                call.result.failure = failure_before
        if segment.failure and segment.failure.startswith("connect failed"):
            segment.end = StreamEnd.FAILED
        elif call.stop_requested:
            segment.end = StreamEnd.STOPPED
        elif call.hung_up:
            segment.end = StreamEnd.HANGUP
        elif call.server_closed:
            segment.end = StreamEnd.SERVER_CLOSED
        if segment.end is not StreamEnd.HANGUP:
            call.conv.hold(time.time_ns() // 1000)
        return segment

    def stop(self) -> None:
        """Twilio ends the current stream: the next 20 ms tick sends `stop` and closes it."""
        self._call.stop_requested = True

    def result(self) -> CallResult:
        """The whole call's result (once, after the last stream)."""
        if self._result is None:
            self._result = self._call.finish()
        return self._result
