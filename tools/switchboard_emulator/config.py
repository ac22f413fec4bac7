"""Emulator settings: one object built once from CLI flags, falling back to `EMULATOR_*` env vars."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmulatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMULATOR_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address")
    port: int = Field(8765, ge=0, le=65535, description="Listen port (0 = ephemeral)")
    api_key: SecretStr | None = Field(None, description="Only key accepted; unset = any non-empty key")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    vad_start_frames: int = Field(2, ge=1, description="Consecutive 20 ms speech frames that start an utterance")
    eou_ms: int = Field(600, ge=20, description="Non-speech that ends an utterance")
    think_ms: int = Field(150, ge=0, description="Pause between end of utterance and the reply")
    reply_ms: int = Field(1500, ge=20, description="Length of every agent reply's audio")
    chunk_ms: int = Field(20, ge=20, description="Agent audio per binary message (multiple of 20)")
    playout_speed: float = Field(
        1.0, ge=1.0, le=100.0,
        description="How much faster than real time agent audio is sent (Deepgram's TTS runs ahead of playback)",
    )
    idle_timeout: float = Field(
        10.0, gt=0, description="Seconds without audio or KeepAlive before CLIENT_MESSAGE_TIMEOUT"
    )
    # Faults active from startup; the admin endpoint changes them at run time.
    reject_next: int = Field(0, ge=0, description="Refuse this many handshakes with --reject-status")
    reject_status: int = Field(429, ge=400, le=599, description="HTTP status of refused handshakes")
    drop_after_ms: int = Field(0, ge=0, description="Close each new session with 1011 this long after Settings")
    error_after_ms: int = Field(0, ge=0, description="Send Error --error-code and close this long after Settings")
    error_code: str = Field("INTERNAL_SERVER_ERROR", min_length=1, description="Code of injected Errors")

    @field_validator("chunk_ms")
    @classmethod
    def _whole_frames(cls, value: int) -> int:
        if value % 20:
            raise ValueError("chunk_ms must be a multiple of 20")
        return value


def parse_args(argv: Sequence[str] | None = None) -> EmulatorConfig:
    """Flags override env vars, which override defaults: only flags actually given are passed on."""
    fields = EmulatorConfig.model_fields
    parser = argparse.ArgumentParser(
        prog="switchboard-deepgram-emulator",
        description="Deepgram Voice Agent v1 emulator with synthetic audio, fault injection and introspection.",
    )
    for name, field in fields.items():
        flag = "--" + name.replace("_", "-")
        kind: type = int if field.annotation is int else float if field.annotation is float else str
        parser.add_argument(
            flag, type=kind, default=None, help=f"{field.description or ''} (env EMULATOR_{name.upper()})"
        )
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return EmulatorConfig(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.error(problems)
