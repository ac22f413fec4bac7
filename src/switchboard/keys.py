"""Every Redis key name and lifetime Switchboard uses, in one place.

All keys of one call carry one hash tag so that per-call operations stay on one Redis
Cluster slot: `{<streamSid>}` on a single Redis; on a cluster (`cluster_buckets` > 0)
`{c<n>}`, one of a fixed number of buckets picked from the streamSid, so that an instance
reads every call of a bucket with one XREAD (XREAD cannot span slots) instead of holding a
reader per call, while the buckets still spread the calls over the cluster's masters. Every
stream is capped (MAXLEN ~) and every per-call key expires after the call (RETENTION).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

DISPATCH_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sb:"
    cluster_buckets: int = 0  # 0: a single Redis (every call its own hash tag)

    def _call(self, stream_sid: str) -> str:
        if self.cluster_buckets:
            return f"{self.prefix}call:{{c{zlib.crc32(stream_sid.encode()) % self.cluster_buckets}}}:{stream_sid}"
        return f"{self.prefix}call:{{{stream_sid}}}"

    # --- one call -------------------------------------------------------------------------
    def call(self, stream_sid: str) -> str:
        """Hash: callSid, accountSid, edge, worker, profile, state, timestamps, parameters."""
        return self._call(stream_sid)

    def caller_audio(self, stream_sid: str) -> str:
        """Stream edge → worker: caller audio, dtmf, mark echoes, stop."""
        return self._call(stream_sid) + ":in"

    def agent_output(self, stream_sid: str) -> str:
        """Stream worker → edge: agent audio, clear, mark, hangup."""
        return self._call(stream_sid) + ":out"

    def events(self, stream_sid: str) -> str:
        """Stream worker → anyone: transcript and timeline of the call."""
        return self._call(stream_sid) + ":events"

    def commands(self, stream_sid: str) -> str:
        """Stream control → owner worker: live commands."""
        return self._call(stream_sid) + ":cmd"

    def journal(self, stream_sid: str) -> str:
        """Stream worker → replay tools: the call's recorded Twilio and Deepgram traffic (opt-in)."""
        return self._call(stream_sid) + ":journal"

    def lease(self, stream_sid: str) -> str:
        """String: the owner worker's fencing token; expires unless renewed."""
        return self._call(stream_sid) + ":lease"

    def per_call(self, stream_sid: str) -> tuple[str, ...]:
        return (
            self.call(stream_sid),
            self.caller_audio(stream_sid),
            self.agent_output(stream_sid),
            self.events(stream_sid),
            self.commands(stream_sid),
            self.journal(stream_sid),
        )

    # --- stream identity: what the control API granted one callSid (one hash tag per callSid, so
    # the edge consumes a token and a resume grant in one transaction on a Redis Cluster) ---------
    def stream_token(self, call_sid: str) -> str:
        """String: the one-time token the TwiML endpoint issued for this call's next stream."""
        return f"{self.prefix}streamtoken:{{{call_sid}}}"

    def resume_grant(self, call_sid: str) -> str:
        """String: the dropped streamSid that this call's next stream may resume (one-time)."""
        return f"{self.prefix}resumegrant:{{{call_sid}}}"

    def grants_issued(self, call_sid: str) -> str:
        """Hash webhook step → time: a replayed signed request for a step already answered mints nothing."""
        return f"{self.prefix}granted:{{{call_sid}}}"

    def call_by_callsid(self, call_sid: str) -> str:
        """String: callSid → current streamSid (a call may get a new stream after edge loss)."""
        return f"{self.prefix}callsid:{call_sid}"

    # --- fleet ------------------------------------------------------------------------------
    def dispatch(self) -> str:
        """Stream + consumer group: one entry per new call, pending until the call ends."""
        return f"{self.prefix}dispatch"

    def live_calls(self) -> str:
        """Sorted set streamSid → start time of calls not yet ended."""
        return f"{self.prefix}calls:live"

    def worker(self, worker_id: str) -> str:
        """Hash + TTL: a worker's heartbeat, capacity and load."""
        return f"{self.prefix}worker:{worker_id}"

    def wake(self, instance_id: str) -> str:
        """Stream an instance writes to itself to interrupt its own blocking XREAD."""
        return f"{self.prefix}wake:{{{instance_id}}}"

    # --- admission control (one hash tag: its scripts touch a single cluster slot) --------------
    def admission_fleet(self) -> str:
        """Hash worker id → "capacity live draining deadline_ms"; expires when every worker is gone."""
        return f"{self.prefix}{{admission}}:fleet"

    def admission_edges(self) -> str:
        """Hash edge id → "load‰ overloaded deadline_ms"; expires when every edge is gone."""
        return f"{self.prefix}{{admission}}:edges"

    def admission_reserved(self) -> str:
        """Sorted set callSid → admitted at (Redis ms): admitted by TwiML, call not announced yet."""
        return f"{self.prefix}{{admission}}:reserved"

    def admission_queue(self) -> str:
        """Sorted set callSid → entered the hold queue at (Redis ms): the FIFO order."""
        return f"{self.prefix}{{admission}}:queue"

    def admission_queue_seen(self) -> str:
        """Sorted set callSid → last poll (Redis ms): a caller who stops polling hung up."""
        return f"{self.prefix}{{admission}}:queue:seen"

    # --- configuration ------------------------------------------------------------------------
    def default_settings(self) -> str:
        return f"{self.prefix}config:default"

    def profile(self, name: str) -> str:
        return f"{self.prefix}config:profile:{name}"

    def profiles(self) -> str:
        return f"{self.prefix}config:profiles"

    def call_settings(self, call_sid: str) -> str:
        return f"{self.prefix}config:call:{call_sid}"


# Stream caps: approximate trimming keeps XADD O(1).
AUDIO_STREAM_MAXLEN = 3000  # entries; an entry holds >= 20 ms, so >= 60 s of backlog
EVENTS_STREAM_MAXLEN = 5000
COMMANDS_STREAM_MAXLEN = 200
DISPATCH_STREAM_MAXLEN = 100_000
WAKE_STREAM_MAXLEN = 16
WAKE_TTL_S = 3600
STREAM_TOKEN_TTL_S = 120  # Twilio opens the stream within seconds of fetching the TwiML
# Twilio's signature carries no timestamp: a captured webhook can be replayed at any time. Each
# step of a call mints its grants once; the record of that outlives any call by far.
GRANTS_ISSUED_TTL_S = 24 * 3600
STREAM_TOKEN_PARAMETER = "sb_token"
# <Parameter> naming the dropped stream a reconnected call replaces: a claim, honoured only with
# the matching one-time resume grant that /twiml/continue stored for this callSid.
RESUME_PARAMETER = "sb_resume_of"
