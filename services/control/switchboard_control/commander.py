"""Live commands: append to the call's command stream, then wait for the owner's answer.

Whichever worker owns the call reads its `:cmd` stream and answers with a `command_result`
event carrying the command id. The wait reads the events stream from the position it had
*before* the command was appended, so an answer can never slip by unseen. A command carries
`expires_at`: a worker that picks it up later (no owner yet, takeover) refuses it, so a 504
means "not applied", not "maybe later".
"""

from __future__ import annotations

import time
import uuid

from fastapi import HTTPException, status

from switchboard import entries, messages, redis_types
from switchboard import keys as keyspace
from switchboard.messages import Event

from . import metrics
from .callstate import CallRecord, decode_event
from .deps import State
from .models import CommandResult


class CommandTimeout(Exception):
    def __init__(self, command_id: str) -> None:
        super().__init__(command_id)
        self.command_id = command_id


async def send(state: State, record: CallRecord, command: messages.Command, *, wait: bool = True) -> CommandResult:
    """Send one command; raises CommandTimeout when no owner answers in time."""
    events_key = state.keys.events(record.stream_sid)
    command_id = uuid.uuid4().hex
    timeout = state.settings.command_ack_timeout_s
    op = command.op
    envelope = messages.Envelope(id=command_id, expires_at=round(time.time() + timeout, 3), command=command)
    last = redis_types.entries(await state.redis.xrevrange(events_key, count=1))
    position: bytes | str = last[0][0] if last else "0-0"
    await state.redis.xadd(
        state.keys.commands(record.stream_sid),
        entries.command(envelope.dumps()).fields(),  # type: ignore[arg-type]
        maxlen=keyspace.COMMANDS_STREAM_MAXLEN,
        approximate=True,
    )
    if not wait:
        return CommandResult(applied=None, detail="sent", worker=record.fields.get("worker") or None,
                             command_id=command_id)
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        response = await state.redis_block.xread({events_key: position}, count=200, block=max(1, int(remaining * 1000)))
        for _key, items in redis_types.streams(response):
            for entry_id, fields in items:
                position = entry_id
                event = decode_event(fields)
                if event is None:
                    continue
                if event["type"] == Event.COMMAND_RESULT and event.get("id") == command_id:
                    applied = bool(event.get("ok"))
                    metrics.COMMANDS.labels(op, "applied" if applied else "rejected").inc()
                    return CommandResult(
                        applied=applied,
                        detail=str(event.get("detail", "")),
                        worker=event.get("worker") or record.fields.get("worker") or None,
                        command_id=command_id,
                    )
                if event["type"] == Event.CALL_ENDED:
                    metrics.COMMANDS.labels(op, "rejected").inc()
                    raise HTTPException(status.HTTP_409_CONFLICT, f"call {record.call_sid} ended before the command")
    metrics.COMMANDS.labels(op, "timeout").inc()
    raise CommandTimeout(command_id)


def timeout_response_detail(state: State, command_id: str) -> str:
    return (
        f"no worker acknowledged command {command_id} within {state.settings.command_ack_timeout_s:g} s; "
        "it expires unapplied"
    )
