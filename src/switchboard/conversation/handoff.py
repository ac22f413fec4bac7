"""When the call may leave the agent: once what the agent is saying has played to the caller (pure).

A transfer must not cut the agent's sentence ("Let me connect you to…"). What has played is
known from Twilio's mark echoes (`replies.ReplyLedger`): the call is quiet once no reply is
being spoken by Deepgram and none is still playing at Twilio. Two ways to wait:

- `expect_reply=False` (a transfer over REST, after an optional announcement): as soon as the
  call is quiet, which may be at once;
- `expect_reply=True` (the agent's own `transfer_call`: Deepgram speaks its goodbye *after* the
  function's answer): first a reply must start, then play out; if none starts within
  `reply_wait_s`, the call moves anyway.

Whatever happens, a waiter fires within `MAX_WAIT_S` (a client that never echoes marks, a
stalled agent): the ledger's own unconfirmed-reply expiry ends a reply long before that.
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import Played

MAX_WAIT_S = 30.0


@dataclass(slots=True)
class _Waiter:
    token: str
    since: float
    reply_by: float | None  # expect_reply: a reply must have started by then
    reply_started: bool = False


class Handoff:
    def __init__(self) -> None:
        self._waiters: list[_Waiter] = []

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    def wait(self, token: str, now: float, *, expect_reply: bool, reply_wait_s: float, quiet: bool) -> list[Played]:
        waiter = _Waiter(token, now, now + reply_wait_s if expect_reply else None)
        self._waiters.append(waiter)
        return self.check(now, quiet=quiet)

    def reply_started(self) -> None:
        for waiter in self._waiters:
            waiter.reply_started = True

    def cancel(self, token: str) -> None:
        self._waiters = [w for w in self._waiters if w.token != token]

    def check(self, now: float, *, quiet: bool) -> list[Played]:
        """Called whenever playback may have moved on (a mark echoed, a clear, a reply ended, a tick)."""
        fired: list[Played] = []
        for waiter in list(self._waiters):
            if now - waiter.since >= MAX_WAIT_S:
                fired.append(Played(waiter.token, forced=True))
            elif waiter.reply_by is not None and not waiter.reply_started:
                if now >= waiter.reply_by and quiet:
                    fired.append(Played(waiter.token))  # the agent said nothing more: nothing to cut
            elif quiet:
                fired.append(Played(waiter.token))
        done = {played.token for played in fired}
        self._waiters = [w for w in self._waiters if w.token not in done]
        return fired
