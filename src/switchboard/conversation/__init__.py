"""The conversation core of one call: pure (no I/O, no clock of its own), events in, actions out.

- `core`: `Conversation`, the facade the worker's session and the journal replay drive;
- `replies`: the agent's replies, their marks, what the caller heard, turn timing;
- `dead_air`: the watchdog for a stalled agent or a silent line;
- `dtmf`: keypad input gathered into entries for the agent, `collect_digits`, masking;
- `handoff`: when what the agent says has played, so that a transfer never cuts it;
- `context`: the conversation so far, for a new Deepgram session;
- `actions`: what the core decides, for its driver to carry out;
- `marks`: the names of the Twilio marks that cut replies into segments.
"""

from .actions import (
    Action,
    Count,
    DigitsCollected,
    Emit,
    GiveUp,
    Hangup,
    Observe,
    Played,
    Reconnect,
    Record,
    ToAgent,
    ToCaller,
)
from .config import ConversationConfig
from .context import Context
from .context import build as build_context
from .core import Conversation
from .marks import BYTES_PER_MS, SEGMENT_BYTES, is_reply_start, mark_name, parse_mark
from .replies import deepgram_stages, heard_prefix

__all__ = [
    "BYTES_PER_MS", "SEGMENT_BYTES", "Action", "Context", "Conversation", "ConversationConfig", "Count",
    "DigitsCollected", "Emit", "GiveUp", "Hangup", "Observe", "Played", "Reconnect", "Record", "ToAgent", "ToCaller",
    "build_context",
    "deepgram_stages", "heard_prefix", "is_reply_start", "mark_name", "parse_mark",
]
