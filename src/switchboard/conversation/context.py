"""The conversation so far, as context for a new Deepgram session (pure).

A new session (after a drop, a stall, a takeover or a new stream of the same call) gets the
transcript and function calls recorded in the call's events. What the caller never heard
is left out when the agent must answer again; the caller's last words, if the old session
died before answering them, are asked again as a user message instead of left hanging.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import deepgram

MAX_CONTEXT_ITEMS = 60


@dataclass(frozen=True, slots=True)
class Context:
    messages: list[dict[str, Any]]
    unanswered: str | None  # the caller's last words, to send again once the new session is up


def build(events: Iterable[dict[str, Any]], *, reask: bool) -> Context:
    """`events`: the call's recorded events in order; `reask`: the last reply was never heard."""
    history: list[dict[str, Any]] = []
    for event in events:
        kind = event.get("type")
        if kind == "transcript" and event.get("content"):
            history.append(deepgram.history_text(str(event.get("role", "")), str(event["content"])))
        elif kind == "function_call" and event.get("id"):
            history.append(deepgram.history_function_call(
                str(event["id"]), str(event.get("name", "")), str(event.get("arguments", "{}")),
                str(event.get("response", "")),
            ))
    if reask:
        while history and history[-1].get("role") == "assistant":
            history.pop()  # said by Deepgram (ConversationText) but not heard by the caller
    unanswered = None
    if history and history[-1].get("role") == "user":
        unanswered = str(history.pop()["content"])
    return Context(history[-MAX_CONTEXT_ITEMS:], unanswered)
