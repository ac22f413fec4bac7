"""The one-time grants a call's next media stream carries: a stream token and, on a reconnect, a
resume grant. Minted when Twilio fetches the TwiML that opens the stream (`routes.twiml`,
`routes.transfers`, `outbound.callbacks`); the edge checks and spends them.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from switchboard import keys as keyspace
from switchboard.keys import RESUME_PARAMETER

from . import metrics
from .deps import State
from .twiml_documents import form_value

log = logging.getLogger(__name__)

SID = re.compile(r"[A-Za-z0-9]{2,64}")  # what the edge accepts as a callSid


async def issue(
    state: State, form: dict[str, list[str]], parameters: dict[str, str], *, step: str, resume_of: str | None = None
) -> None:
    """A one-time token for this call's next stream and, on a reconnect, a one-time resume grant.

    Twilio's signature on the stream upgrade is the same for every call on one URL, so a
    captured handshake could be replayed; a token that works once, for one callSid, shortly
    after Twilio fetched this TwiML, cannot. The resume grant names the one old stream the new
    one may continue: the edge honours `sb_resume_of` only with it.

    Twilio's webhook signature has no timestamp either, so a captured request to this endpoint
    could be replayed to mint fresh tokens: each step of a call (its first TwiML, each
    reconnect) mints once, and a replay gets TwiML whose stream the edge will refuse.
    """
    call_sid = form_value(form, "CallSid")
    if not SID.fullmatch(call_sid):
        return
    keys = state.keys
    first = await state.redis.hsetnx(keys.grants_issued(call_sid), step, str(time.time()))
    if not first:
        metrics.TWIML.labels("replayed").inc()
        log.warning("replayed TwiML request: no new stream token", extra={"call_sid": call_sid, "step": step})
        return
    token = secrets.token_urlsafe(24)
    pipe = state.redis.pipeline(transaction=False)
    pipe.expire(keys.grants_issued(call_sid), keyspace.GRANTS_ISSUED_TTL_S)
    pipe.set(keys.stream_token(call_sid), token, ex=keyspace.STREAM_TOKEN_TTL_S)
    if resume_of:
        pipe.set(keys.resume_grant(call_sid), resume_of, ex=keyspace.STREAM_TOKEN_TTL_S)
    await pipe.execute()
    parameters[keyspace.STREAM_TOKEN_PARAMETER] = token
    if resume_of:
        parameters[RESUME_PARAMETER] = resume_of
