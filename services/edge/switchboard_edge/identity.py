"""Who a new stream is, decided here on the server and never taken from the peer.

Twilio signs a Media Streams upgrade over the URL alone, so one captured handshake opens as
many streams as its holder likes, each claiming whatever streamSid, callSid and parameters it
wants. A stream is therefore let in only when:

- it carries the one-time token the control API minted for its callSid (when tokens are
  required): the token is consumed, so a replayed `start` fails;
- a resume (`sb_resume_of`) comes with the one-time grant /twiml/continue stored for this
  callSid and exactly that old stream; without it the claim means nothing and the stream is
  refused, so no stream can adopt a stranger's conversation or end it;
- its streamSid is new (claimed atomically: a second `start` for a live or ended stream is
  refused, so nobody can listen to a call or speak into it by reusing its streamSid);
- its callSid is not bound to another live stream, unless it resumes exactly that stream.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import redis.asyncio as redis

from switchboard import twilio
from switchboard.keys import RESUME_PARAMETER, STREAM_TOKEN_PARAMETER, Keys
from switchboard.messages import CallField, RecordState

# A claimed streamSid whose stream never got further (refused token, Redis error) lapses soon;
# the call record written once the stream is admitted sets the real lifetime.
CLAIM_TTL_S = 600

# Create the call record's first field only if the record does not exist yet.
_CLAIM_STREAM = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], 'edge', ARGV[1], 'call_sid', ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
return 1
"""

# GETDEL the token and the resume grant together (one slot: both carry the callSid's hash tag).
_CONSUME_GRANTS = """
return {redis.call('getdel', KEYS[1]), redis.call('getdel', KEYS[2])}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """`refused` is a metric label (None: let the stream in); `resume_of` a resume this edge verified."""

    refused: str | None = None
    description: str = ""
    resume_of: str = ""


async def admit_identity(
    client: redis.Redis, keys: Keys, start: twilio.Start, edge_id: str, *, require_token: bool
) -> Verdict:
    offered_token = start.custom_parameters.get(STREAM_TOKEN_PARAMETER, "")
    offered_resume = start.custom_parameters.get(RESUME_PARAMETER, "")
    token, grant = await _consume_grants(client, keys, start.call_sid, token=require_token, resume=bool(offered_resume))
    if require_token and not _same(token, offered_token):
        return Verdict("stream_token", "start without a valid one-time stream token for its callSid")
    if offered_resume and not _same(grant, offered_resume):
        return Verdict("resume_grant", "sb_resume_of without the resume grant issued for this call and stream")
    claimed = await client.eval(_CLAIM_STREAM, 1, keys.call(start.stream_sid), edge_id, start.call_sid, CLAIM_TTL_S)
    if not claimed:
        return Verdict("duplicate_stream", "a stream with this streamSid exists already")
    raw = await client.get(keys.call_by_callsid(start.call_sid))
    bound = raw.decode() if isinstance(raw, bytes) else raw
    if bound is not None and bound not in (start.stream_sid, offered_resume):
        state = await client.hget(keys.call(bound), CallField.STATE)
        if state is not None and state != RecordState.ENDED.encode():
            return Verdict("callsid_in_use", "the callSid belongs to another live stream")
    return Verdict(resume_of=offered_resume)


async def _consume_grants(
    client: redis.Redis, keys: Keys, call_sid: str, *, token: bool, resume: bool
) -> tuple[bytes | None, bytes | None]:
    if not (token or resume):
        return None, None
    issued = await client.eval(_CONSUME_GRANTS, 2, keys.stream_token(call_sid), keys.resume_grant(call_sid))
    # Lua turns a missing value (nil) into false, and a table ends at its first nil.
    issued = [value or None for value in (issued or [])] + [None, None]
    return issued[0], issued[1]


def _same(issued: bytes | None, offered: str) -> bool:
    return issued is not None and bool(offered) and hmac.compare_digest(issued, offered.encode())
