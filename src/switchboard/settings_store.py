"""Agent settings in Redis: the default, named profiles and per-call settings, versioned.

Each document is a JSON object `{"version": n, "settings": {...}}`. The worker resolves a
call's settings as: per-call (by callSid) → the profile the call names → the default →
the built-in default (the seed's car seller).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis.asyncio as redis
from pydantic import ValidationError

from .agent_settings import AgentSettings
from .keys import Keys


@dataclass(frozen=True, slots=True)
class Resolved:
    settings: AgentSettings
    source: str  # "call", "profile:<name>", "default" or "builtin"
    version: int


def encode(settings: AgentSettings, version: int) -> bytes:
    return orjson.dumps({"version": version, "settings": settings.model_dump(mode="json", exclude_none=True)})


def decode(raw: bytes) -> tuple[AgentSettings, int]:
    doc = orjson.loads(raw)
    return AgentSettings.model_validate(doc["settings"]), int(doc.get("version", 1))


async def resolve(client: redis.Redis, keys: Keys, call_sid: str, profile: str | None) -> Resolved:
    candidates: list[tuple[str, str]] = [(keys.call_settings(call_sid), "call")]
    if profile:
        candidates.append((keys.profile(profile), f"profile:{profile}"))
    candidates.append((keys.default_settings(), "default"))
    # Keys of different slots: read them one by one (cheap, once per call start).
    for key, source in candidates:
        raw = await client.get(key)
        if raw is None:
            continue
        try:
            settings, version = decode(raw)
        except (ValidationError, ValueError, KeyError, TypeError):
            continue  # a bad document must not keep calls from starting; control validates writes
        return Resolved(settings, source, version)
    return Resolved(AgentSettings(), "builtin", 0)
