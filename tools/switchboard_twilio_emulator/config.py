"""Emulator settings: one object built once from CLI flags, falling back to `TWILIO_EMULATOR_*` env vars."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import callees
from .auth import Account
from .callees import Directory  # annotations in the class: `callees` there is the field

TEST_ACCOUNT_SID = "AC" + "0" * 31 + "1"


class EmulatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWILIO_EMULATOR_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address")
    port: int = Field(8766, ge=0, le=65535, description="Listen port (0 = ephemeral)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    account_sid: str = Field(TEST_ACCOUNT_SID, pattern=r"^AC[0-9a-fA-F]{32}$", description="The one account served")
    auth_token: SecretStr = Field(SecretStr("emulator-auth-token"),
                                  description="The account's auth token: Basic auth and the callbacks' signatures")
    api_keys: str = Field("", description="API keys accepted for Basic auth: SKsid:secret,SKsid2:secret2")
    caller_ids: str = Field("", description="Verified/owned From numbers, comma-separated (empty = any valid number)")
    cps: float = Field(1.0, gt=0, le=1000, description="The account's calls per second")
    over_cps: Literal["queue", "reject"] = Field(
        "queue", description="Calls beyond the CPS: queue them as Twilio does, or refuse with 429/20429")
    max_concurrent_requests: int = Field(100, ge=1, description="REST requests in flight before 429/20429")
    webhook_timeout_s: float = Field(15.0, gt=0, le=60, description="Twilio's wait for a webhook answer")
    setup_ms: int = Field(50, ge=0, le=10_000, description="From dialling (initiated) to ringing")
    say_ms_per_char: int = Field(60, ge=0, le=1000, description="How long a <Say> takes per character")
    play_s: float = Field(2.0, ge=0, le=600, description="How long one <Play> takes (the audio is not fetched)")
    callees: Path | None = Field(None, description='JSON file: {"default": {...}, "+14155550100": {...}}')
    default_callee: str = Field("", description="JSON of the callee for numbers without a script")
    deepgram_emulator_url: str | None = Field(
        None, description="Deepgram emulator base URL: check each person's caller audio byte for byte")
    synthetic_audio: bool = Field(True, description="Agent audio is the Deepgram emulator's synthetic frames: "
                                  "check it byte for byte (false for a real Deepgram)")
    stream_connect_timeout_s: float = Field(10.0, gt=0, description="WebSocket open timeout of a <Stream>")
    max_log_entries: int = Field(50_000, ge=100, description="Request and callback log entries kept")
    max_calls: int = Field(10_000, ge=10, description="Ended calls kept for introspection")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            sid, sep, secret = item.partition(":")
            if not sep or not secret or not sid.startswith("SK"):
                raise ValueError("api_keys: expected SKsid:secret[,SKsid:secret]")
        return value

    def account(self) -> Account:
        keys = {}
        for item in filter(None, (v.strip() for v in self.api_keys.split(","))):
            sid, _, secret = item.partition(":")
            keys[sid] = secret
        return Account(self.account_sid, self.auth_token.get_secret_value(), keys)

    def caller_id_set(self) -> frozenset[str] | None:
        ids = frozenset(filter(None, (v.strip() for v in self.caller_ids.split(","))))
        return ids or None

    def directory(self, extra: Sequence[str] = ()) -> Directory:
        """Callees from --callees FILE, --default-callee JSON and repeated --callee NUMBER=JSON."""
        numbers: dict[str, callees.Callee] = {}
        default = callees.Callee()
        if self.callees is not None:
            data = json.loads(self.callees.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{self.callees}: expected an object of number → callee")
            for number, spec in data.items():
                numbers[number] = callees.from_json(spec)
            default = numbers.pop(callees.DEFAULT_KEY, default)
        if self.default_callee:
            default = callees.from_json(json.loads(self.default_callee))
        for item in extra:
            number, sep, spec = item.partition("=")
            if not sep:
                raise ValueError(f"--callee {item!r}: expected NUMBER=JSON")
            numbers[number] = callees.from_json(json.loads(spec))
        return callees.Directory(default, numbers)


def parse_args(argv: Sequence[str] | None = None) -> tuple[EmulatorConfig, list[str]]:
    """Flags override env vars, which override defaults; also returns the repeated --callee items."""
    fields = EmulatorConfig.model_fields
    parser = argparse.ArgumentParser(
        prog="switchboard-twilio-emulator",
        description="Twilio REST emulator: Calls and Conferences API, signed callbacks, AMD, and the media side.",
    )
    for name, field in fields.items():
        flag = "--" + name.replace("_", "-")
        kind: type = int if field.annotation is int else float if field.annotation is float else str
        parser.add_argument(flag, type=kind, default=None,
                            help=f"{field.description or ''} (env TWILIO_EMULATOR_{name.upper()})")
    parser.add_argument("--callee", action="append", default=[], metavar="NUMBER=JSON",
                        help='a number\'s callee, e.g. +14155550100=\'{"kind": "voicemail"}\' (repeat)')
    args = vars(parser.parse_args(argv))
    extra = args.pop("callee")
    given = {k: v for k, v in args.items() if v is not None}
    try:
        config = EmulatorConfig(**given)
        config.directory(extra)  # fail at start, not at the first call
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    return config, extra
