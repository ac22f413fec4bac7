"""Structural checks of client `Settings` / `Update*` bodies, mirroring Deepgram's AsyncAPI spec.

Pure functions: each returns `None` when the body is acceptable, else a description that names the
offending field (sent verbatim as the `INVALID_SETTINGS` error description). Only what the real
service would refuse is checked; unknown extra fields pass, as Deepgram keeps adding them.
"""

from __future__ import annotations

from typing import Any

INPUT_ENCODINGS = frozenset(
    {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729"}
)
OUTPUT_ENCODINGS = frozenset({"linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac"})
CONTAINERS = frozenset({"none", "wav", "ogg"})

# Models Deepgram serves itself (the spec's enums). With a custom `endpoint` any model goes.
MANAGED_THINK_MODELS: dict[str, frozenset[str]] = {
    "open_ai": frozenset(
        {"gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini"}
    ),
    "anthropic": frozenset({"claude-3-5-haiku-latest", "claude-sonnet-4-20250514"}),
    "google": frozenset({"gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-2.5-flash"}),
    "groq": frozenset({"openai/gpt-oss-20b"}),
    "aws_bedrock": frozenset(
        {"anthropic/claude-3-5-sonnet-20240620-v1:0", "anthropic/claude-3-5-haiku-20240307-v1:0"}
    ),
}
SPEAK_PROVIDERS = frozenset({"deepgram", "eleven_labs", "cartesia", "open_ai", "aws_polly"})


def check_settings(msg: dict[str, Any]) -> str | None:
    if "tags" in msg and not _is_str_list(msg["tags"]):
        return "tags must be a list of strings"
    flags = msg.get("flags")
    if flags is not None and (not isinstance(flags, dict) or not isinstance(flags.get("history", True), bool)):
        return "flags.history must be a boolean"
    problem = _check_audio(msg.get("audio"))
    if problem:
        return problem
    agent = msg.get("agent")
    if agent is None:
        return "agent is required"
    if isinstance(agent, str):
        return "agent: stored agent configurations (agent ids) are not supported by the emulator"
    if not isinstance(agent, dict):
        return "agent must be an object"
    return _check_agent(agent)


def check_think(think: Any, where: str = "think") -> str | None:
    items = think if isinstance(think, list) else [think]
    if not items:
        return f"{where} must not be an empty list"
    for i, item in enumerate(items):
        path = f"{where}[{i}]" if isinstance(think, list) else where
        if not isinstance(item, dict):
            return f"{path} must be an object"
        provider = item.get("provider")
        if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
            return f"{path}.provider.type is required"
        kind, model = provider["type"], provider.get("model")
        has_endpoint = isinstance(item.get("endpoint"), dict)
        if kind in MANAGED_THINK_MODELS:
            if not isinstance(model, str) or not model:
                return f"{path}.provider.model is required"
            if not has_endpoint and model not in MANAGED_THINK_MODELS[kind]:
                return f"{path}.provider.model {model!r} is not a supported {kind} model"
        elif not has_endpoint:
            return f"{path}.provider.type {kind!r} needs {path}.endpoint"
        if "prompt" in item and not isinstance(item["prompt"], str):
            return f"{path}.prompt must be a string"
        problem = _check_functions(item.get("functions"), f"{path}.functions")
        if problem:
            return problem
    return None


def check_speak(speak: Any, where: str = "speak") -> str | None:
    items = speak if isinstance(speak, list) else [speak]
    if not items:
        return f"{where} must not be an empty list"
    for i, item in enumerate(items):
        path = f"{where}[{i}]" if isinstance(speak, list) else where
        if not isinstance(item, dict):
            return f"{path} must be an object"
        provider = item.get("provider")
        if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
            return f"{path}.provider.type is required"
        if provider["type"] not in SPEAK_PROVIDERS:
            return f"{path}.provider.type {provider['type']!r} is not a supported speak provider"
        if provider["type"] == "deepgram" and not isinstance(provider.get("model"), str):
            return f"{path}.provider.model is required"
    return None


def check_listen(listen: Any, where: str = "listen") -> str | None:
    if not isinstance(listen, dict):
        return f"{where} must be an object"
    provider = listen.get("provider")
    if provider is None:
        return None
    if not isinstance(provider, dict) or provider.get("type") != "deepgram":
        return f"{where}.provider.type is required and must be 'deepgram'"
    if provider.get("version") == "v2" and not isinstance(provider.get("model"), str):
        return f"{where}.provider.model is required with version v2"
    return None


def _check_audio(audio: Any) -> str | None:
    if audio is None:
        return "audio is required"
    if not isinstance(audio, dict):
        return "audio must be an object"
    audio_in = audio.get("input")
    if audio_in is not None:
        if not isinstance(audio_in, dict):
            return "audio.input must be an object"
        if audio_in.get("encoding") not in INPUT_ENCODINGS:
            return f"audio.input.encoding must be one of {', '.join(sorted(INPUT_ENCODINGS))}"
        rate = audio_in.get("sample_rate")
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            return "audio.input.sample_rate is required (positive integer)"
    audio_out = audio.get("output")
    if audio_out is not None:
        if not isinstance(audio_out, dict):
            return "audio.output must be an object"
        if "encoding" in audio_out and audio_out["encoding"] not in OUTPUT_ENCODINGS:
            return f"audio.output.encoding must be one of {', '.join(sorted(OUTPUT_ENCODINGS))}"
        if "container" in audio_out and audio_out["container"] not in CONTAINERS:
            return "audio.output.container must be one of none, ogg, wav"
        rate = audio_out.get("sample_rate")
        if rate is not None and (not isinstance(rate, int) or rate <= 0):
            return "audio.output.sample_rate must be a positive integer"
    return None


def _check_agent(agent: dict[str, Any]) -> str | None:
    if "listen" in agent:
        problem = check_listen(agent["listen"], "agent.listen")
        if problem:
            return problem
    if "think" in agent:
        problem = check_think(agent["think"], "agent.think")
        if problem:
            return problem
    if "speak" in agent:
        problem = check_speak(agent["speak"], "agent.speak")
        if problem:
            return problem
    if "greeting" in agent and not isinstance(agent["greeting"], str):
        return "agent.greeting must be a string"
    context = agent.get("context")
    if context is not None:
        messages = context.get("messages", []) if isinstance(context, dict) else None
        if not isinstance(messages, list):
            return "agent.context.messages must be a list"
        for i, item in enumerate(messages):
            problem = _check_history_item(item, f"agent.context.messages[{i}]")
            if problem:
                return problem
    return None


def _check_functions(functions: Any, where: str) -> str | None:
    if functions is None:
        return None
    if not isinstance(functions, list):
        return f"{where} must be a list"
    for i, fn in enumerate(functions):
        if not isinstance(fn, dict):
            return f"{where}[{i}] must be an object"
        for key, kind in (("name", str), ("description", str), ("parameters", dict)):
            if not isinstance(fn.get(key), kind) or (kind is str and not fn[key]):
                return f"{where}[{i}].{key} is required"
        if "endpoint" in fn and not (isinstance(fn["endpoint"], dict) and isinstance(fn["endpoint"].get("url"), str)):
            return f"{where}[{i}].endpoint.url is required when endpoint is given"
    return None


def _check_history_item(item: Any, where: str) -> str | None:
    if not isinstance(item, dict) or item.get("type") != "History":
        return f"{where}.type must be 'History'"
    if "function_calls" in item:
        calls = item["function_calls"]
        if not isinstance(calls, list):
            return f"{where}.function_calls must be a list"
        for j, call in enumerate(calls):
            if not isinstance(call, dict):
                return f"{where}.function_calls[{j}] must be an object"
            for key, kind in (("id", str), ("name", str), ("client_side", bool), ("arguments", str), ("response", str)):
                if not isinstance(call.get(key), kind):
                    return f"{where}.function_calls[{j}].{key} is required"
        return None
    if item.get("role") not in ("user", "assistant"):
        return f"{where}.role must be 'user' or 'assistant'"
    if not isinstance(item.get("content"), str):
        return f"{where}.content is required"
    return None


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def client_side_functions(think: Any) -> dict[str, bool]:
    """Declared function names → True when client-side (no `endpoint`), across fallback think items."""
    items = think if isinstance(think, list) else [think]
    declared: dict[str, bool] = {}
    for item in items:
        if isinstance(item, dict):
            for fn in item.get("functions") or ():
                declared.setdefault(fn["name"], "endpoint" not in fn)
    return declared


def think_prompt(think: Any) -> str:
    items = think if isinstance(think, list) else [think]
    first = items[0] if items and isinstance(items[0], dict) else {}
    return first.get("prompt") or ""
