"""An outbound call on the worker: what its outbound record says when the call is claimed.

Control wrote the record before Twilio dialled (switchboard.outbound): the call's `context`
(template variables) and whether answering machines are detected, with the verdict if it
came already. Here the context is filled into the prompt and greeting (and the voicemail
message), and with detection on the greeting is taken out of `Settings`: the conversation core
says it once Twilio's verdict is `human` (switchboard.conversation.amd). An inbound call has
no record and is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard import outbound, templates
from switchboard.agent_settings import AgentSettings
from switchboard.conversation.amd import AmdConfig
from switchboard.outbound import OutboundKeys

from .port import WorkerPort
from .precall import call_parameters


@dataclass(frozen=True, slots=True)
class Prepared:
    settings: AgentSettings
    amd: AmdConfig | None = None  # detection on: the greeting waits
    verdict: str | None = None  # Twilio's verdict, if it came before the call was claimed
    detection_ms: int | None = None


async def prepare(port: WorkerPort, call_sid: str, meta: dict[bytes, bytes], settings: AgentSettings) -> Prepared:
    info = await outbound.load(port.redis, OutboundKeys(port.keys.prefix), call_sid)
    if info is None:
        return Prepared(settings)
    context = templates.call_context(call_parameters(meta), info.context)
    settings = templates.fill_settings(settings, context)
    if not info.amd:
        return Prepared(settings)
    message = templates.render(settings.voicemail.message, context)
    config = AmdConfig.from_blocks(settings.amd, settings.voicemail, greeting=settings.greeting, message=message)
    held = settings.model_copy(update={"greeting": None})  # said on a `human` verdict, never in Settings
    return Prepared(held, config, info.answered_by, info.amd_ms)
