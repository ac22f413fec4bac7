"""Agent settings in Redis: the default, named profiles and per-call settings, versioned.

Each document is a JSON object `{"version": n, "settings": {...}}`. The worker resolves a
call's settings as: per-call (by callSid) → the profile the call names → the default →
the built-in default (the seed's car seller).

Writes go through one Lua script so that the version is read, checked (optimistic
concurrency) and incremented atomically: two writers never both get version n+1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson
import redis.asyncio as redis
from pydantic import ValidationError

from .agent_settings import AgentSettings
from .keys import Keys


class VersionConflict(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"the document is at version {current}")
        self.current = current


# KEYS[1] document; ARGV[1] settings JSON, ARGV[2] expected version ('' = any), ARGV[3] TTL s (0 = none).
# Returns {new version, previous version}, or {-1, current version} when the expectation failed.
_WRITE = """
local version = 0
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and tonumber(doc['version']) then version = tonumber(doc['version']) end
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then return {-1, version} end
local new = version + 1
redis.call('SET', KEYS[1], '{"version":' .. new .. ',"settings":' .. ARGV[1] .. '}')
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {new, version}
"""

# KEYS[1] document; ARGV[1] expected version ('' = any). Returns 1 deleted, 0 absent, -1 conflict.
_DELETE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if ARGV[1] ~= '' then
  local ok, doc = pcall(cjson.decode, current)
  local version = (ok and type(doc) == 'table' and tonumber(doc['version'])) or 0
  if tonumber(ARGV[1]) ~= version then return -1 end
end
redis.call('DEL', KEYS[1])
return 1
"""


# KEYS[1] the set of profile names; ARGV[1] a name, ARGV[2] the most names allowed.
# Returns 1 the name was there already, 2 it was added, 0 the set is full. One script, so two
# writers of new profiles can never both take the last place.
_RESERVE_NAME = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 2
"""


class NameReservation(enum.Enum):
    EXISTING = 1
    ADDED = 2
    FULL = 0


@dataclass(frozen=True, slots=True)
class Resolved:
    settings: AgentSettings
    source: str  # "call", "profile:<name>", "default" or "builtin"
    version: int


def encode(settings: AgentSettings, version: int) -> bytes:
    return orjson.dumps({"version": version, "settings": settings.model_dump(mode="json", exclude_none=True)})


def decode(raw: bytes | str) -> tuple[AgentSettings, int]:
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


async def read(client: redis.Redis, key: str) -> tuple[AgentSettings, int] | None:
    """The stored document, or None if absent (or unreadable: control validated every write)."""
    raw = await client.get(key)
    if raw is None:
        return None
    try:
        return decode(raw)
    except (ValidationError, ValueError, KeyError, TypeError):
        return None


async def write(
    client: redis.Redis, key: str, settings: AgentSettings, *, expect_version: int | None = None, ttl_s: int = 0
) -> int:
    """Store `settings` as the next version; returns it. Raises VersionConflict if `expect_version` is stale."""
    body = orjson.dumps(settings.model_dump(mode="json", exclude_none=True))
    expected = "" if expect_version is None else str(expect_version)
    new, previous = await client.eval(_WRITE, 1, key, body, expected, str(ttl_s))
    if int(new) < 0:
        raise VersionConflict(int(previous))
    return int(new)


async def delete(client: redis.Redis, key: str, *, expect_version: int | None = None) -> bool:
    """True if a document was deleted, False if there was none."""
    expected = "" if expect_version is None else str(expect_version)
    result = int(await client.eval(_DELETE, 1, key, expected))
    if result < 0:
        current = await read(client, key)
        raise VersionConflict(current[1] if current else 0)
    return result == 1


async def reserve_name(client: redis.Redis, names_key: str, name: str, max_names: int) -> NameReservation:
    """Add `name` to the set at `names_key` unless it would then hold more than `max_names`."""
    return NameReservation(int(await client.eval(_RESERVE_NAME, 1, names_key, name, str(max_names))))
