"""Secrets never read back: the masking rules (pure), then every read path of a real
switchboard-control: settings, a call's events (detail and SSE), a journal export.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
import redis as redis_sync

from switchboard import entries
from switchboard.agent_settings import AgentSettings, Journal
from switchboard.journal import Recorder, from_jsonl
from switchboard.keys import Keys
from switchboard.redaction import MASK, is_secret_name, redact, redact_text, redact_url
from switchboard.settings_secrets import MaskedSecretError, masked, restore_secrets

from test_control_api import API_TOKEN, control_service

# --- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "api_key", "x-api-key", "apiKey", "APIKey", "ApiKey", "apikey", "accessToken", "access_token", "clientSecret",
    "client-secret", "authToken", "AUTH_TOKEN", "secret_access_key", "secretAccessKey", "session_token", "password",
    "Authorization", "credentials", "sig", "signature", "X-Amz-Signature", "refreshToken", "privateKey", "key",
])
def test_secret_names_are_recognised_in_snake_kebab_and_camel_case(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "keyterms", "max_tokens", "maxTokens", "tokenizer", "model", "voice", "monkey", "author", "type", "url",
    "smart_format", "temperature", "region",
])
def test_ordinary_names_are_not_secrets(name):
    assert not is_secret_name(name)


# --- URLs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pass@hooks.example.com/x", "https://***@hooks.example.com/x"),
    ("https://ghp_TOKEN@git.example.com/repo", "https://***@git.example.com/repo"),
    ("https://u:p@h.example.com:8443/a?b=1", "https://***@h.example.com:8443/a?b=1"),
    ("https://llm.example.com/v1?api_key=sk-1&model=m", "https://llm.example.com/v1?api_key=***&model=m"),
    ("https://h.example.com/?token=t&access_token=a&sig=s&signature=x&key=k&secret=c&password=p&apiKey=q",
     "https://h.example.com/?token=***&access_token=***&sig=***&signature=***&key=***&secret=***&password=***&apiKey=***"),
    ("https://h.example.com/cb#access_token=abc&state=1", "https://h.example.com/cb#access_token=***&state=1"),
    ("https://s3.example.com/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&x=%2A",
     "https://s3.example.com/o?X-Amz-Credential=***&X-Amz-Signature=***&x=%2A"),
    ("wss://agent.example.com/v1?keyterm=a&token=", "wss://agent.example.com/v1?keyterm=a&token="),
    ("https://plain.example.com/path?q=1", "https://plain.example.com/path?q=1"),
    ("http://[::1", MASK),  # cannot be taken apart: nothing risked
])
def test_url_credentials_and_secret_parameters_are_masked_and_nothing_else(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent: a masked URL stays as it is


def test_urls_inside_text_are_masked():
    text = "webhook https://u:p@h.example.com/x?token=abc failed; see https://docs.example.com/e?id=1."
    assert redact_text(text) == ("webhook https://***@h.example.com/x?token=*** failed; "
                                 "see https://docs.example.com/e?id=1.")


def test_redact_masks_names_anywhere_urls_in_any_string_and_keeps_numbers():
    event = {"type": "error", "description": "POST https://a:b@x.example.com?key=1 failed",
             "details": {"clientSecret": "c-1", "accessToken": "a-1", "max_tokens": 5, "use_auth": True},
             "stages": {"deepgram_ttt_token": 0.31}, "headers": {"x-custom": "h"}}
    assert redact(event) == {
        "type": "error", "description": "POST https://***@x.example.com?key=*** failed",
        "details": {"clientSecret": MASK, "accessToken": MASK, "max_tokens": 5, "use_auth": True},
        "stages": {"deepgram_ttt_token": 0.31}, "headers": {"x-custom": MASK},
    }
    clean = {"type": "transcript", "role": "user", "content": "hello"}
    assert redact(clean) == clean


# --- settings: masked on read, kept on write -----------------------------------------------------------

SECRETS = ("sk-think-1111", "llm-pass-2222", "tts-user-3333", "tts-pass-4444", "hook-pass-5555", "hook-token-6666",
           "camel-access-7777", "camel-client-8888", "camel-auth-9999", "hdr-0000")


def secret_settings_doc() -> dict:
    return {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3", "accessToken": SECRETS[6]}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini", "clientSecret": SECRETS[7],
                         "authToken": SECRETS[8], "max_tokens": 300},
            "prompt": "Sell cars.",
            "endpoint": {"url": f"https://bot:{SECRETS[1]}@llm.example.com/v1/chat?api_key={SECRETS[0]}&model=m",
                         "headers": {"X-Custom": SECRETS[9]}},
            "functions": [
                {"name": "get_slots", "description": "Free slots",
                 "parameters": {"type": "object", "properties": {"api_key": {"type": "string"}}},
                 "webhook": {"url": f"https://ops:{SECRETS[4]}@hooks.example.com/slots?token={SECRETS[5]}&v=2"}},
                {"name": "end_call", "description": "Hang up"},
            ],
        },
        "speak": {"provider": {"type": "open_ai", "model": "tts-1", "voice": "alloy"},
                  "endpoint": {"url": f"https://{SECRETS[2]}:{SECRETS[3]}@tts.example.com/speech"}},
    }


def stored_doc() -> dict:
    return AgentSettings.model_validate(secret_settings_doc()).model_dump(mode="json", exclude_none=True)


def test_masked_settings_show_no_secret_keep_their_shape_and_still_validate():
    shown = masked(stored_doc())
    text = orjson.dumps(shown).decode()
    assert not [secret for secret in SECRETS if secret in text]
    think = shown["think"]
    assert think["endpoint"]["url"] == "https://***@llm.example.com/v1/chat?api_key=***&model=m"
    assert think["functions"][0]["webhook"]["url"] == "https://***@hooks.example.com/slots?token=***&v=2"
    assert think["provider"]["max_tokens"] == 300  # a count, not a secret
    assert think["functions"][0]["parameters"]["properties"] == {"api_key": {"type": "string"}}  # a schema, not a secret
    assert shown["listen"]["provider"]["accessToken"] == MASK
    AgentSettings.model_validate(shown)


def test_the_masked_document_sent_back_keeps_every_stored_secret():
    stored = stored_doc()
    shown = AgentSettings.model_validate(masked(stored)).model_dump(mode="json", exclude_none=True)
    shown["think"]["prompt"] = "Sell cars politely."
    shown["think"]["functions"].reverse()  # a function's secret follows the function, not its position
    restored = restore_secrets(shown, stored)
    assert restored["think"]["prompt"] == "Sell cars politely."
    restored["think"]["prompt"] = stored["think"]["prompt"]
    restored["think"]["functions"].reverse()
    assert restored == stored


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d["think"]["endpoint"].__setitem__("url", "https://***@evil.example.com/v1/chat?api_key=***&model=m"),
     "think.endpoint.url"),
    (lambda d: d["think"]["endpoint"].__setitem__("url", "https://evil.example.com/v1"),
     "think.endpoint.headers.X-Custom"),
    (lambda d: d["think"]["functions"][0]["webhook"].__setitem__(
        "url", "https://***@hooks.example.com:444/slots?token=***&v=2"), "think.functions[get_slots].webhook.url"),
    (lambda d: d["think"]["functions"][0].__setitem__("name", "renamed"), "think.functions[renamed].webhook.url"),
    (lambda d: d["speak"]["endpoint"].__setitem__("url", "http://***@tts.example.com/speech"), "speak.endpoint.url"),
])
def test_a_masked_secret_is_never_kept_for_another_host_or_a_place_without_one(change, says):
    stored = stored_doc()
    shown = masked(stored)
    change(shown)
    with pytest.raises(MaskedSecretError, match=says.replace("[", r"\[").replace("]", r"\]")):
        restore_secrets(shown, stored)


# --- the journal ----------------------------------------------------------------------------------------


def test_the_journal_records_no_secret_in_settings_events_or_deepgram_errors():
    rec = Recorder(Journal(enabled=True))
    settings = AgentSettings.model_validate(secret_settings_doc())
    recorded = [
        rec.start("CA1", "MZ1", settings, 1),
        rec.to_deepgram(settings.to_settings_message(), 2),
        rec.session_event(orjson.dumps({"type": "function_call", "name": "get_slots",
                                        "response": f"failed: https://ops:{SECRETS[4]}@hooks.example.com"}), 3),
        rec.from_deepgram(orjson.dumps({"type": "Error",
                                        "description": f"bad endpoint https://llm.example.com?api_key={SECRETS[0]}",
                                        "url": f"https://llm.example.com?api_key={SECRETS[0]}"}).decode(), 4),
    ]
    for entry in recorded:
        assert not [secret for secret in SECRETS if secret.encode() in entry.payload], entry.payload
    # A message with nothing to hide is recorded byte for byte.
    text = '{"type": "ConversationText", "role": "user", "content": "hi"}'
    assert rec.from_deepgram(text, 5).payload[1:] == text.encode()
    latency = orjson.dumps({"type": "turn_latency", "stages": {"deepgram_ttt_token": 0.3}})
    assert rec.session_event(latency, 6).payload[1:] == latency


# --- every read path of the control API --------------------------------------------------------------------

PREFIX = "ctlredact:"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def control(redis_url, tmp_path_factory):
    service, port = control_service(redis_url, PREFIX)
    service.start(tmp_path_factory.mktemp("control-redaction"))
    yield f"http://127.0.0.1:{port}"
    service.stop()


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def test_settings_read_back_masked_and_a_get_put_round_trip_keeps_the_secrets(control, redis_url):
    async with httpx.AsyncClient(base_url=control, headers=AUTH, timeout=10) as api:
        put = await api.put("/v1/profiles/secrets", json=secret_settings_doc())
        assert put.status_code == 200, put.text
        assert not leaked(put.text)
        got = await api.get("/v1/profiles/secrets")
        assert not leaked(got.text)
        call_put = await api.put("/v1/calls/CAredact1/settings", json=secret_settings_doc())
        assert not leaked(call_put.text) and not leaked((await api.get("/v1/calls/CAredact1/settings")).text)
        # GET → PUT of the masked document: every secret stays as stored.
        again = await api.put("/v1/profiles/secrets", json=got.json()["settings"], headers={"If-Match": '"1"'})
        assert again.status_code == 200, again.text
        with redis_sync.Redis.from_url(redis_url) as client:
            stored = orjson.loads(client.get(f"{PREFIX}config:profile:secrets"))["settings"]
        assert stored == stored_doc()
        # The masked credentials of a webhook cannot be moved to another host.
        moved = got.json()["settings"]
        moved["think"]["functions"][0]["webhook"]["url"] = "https://***@attacker.example.com/x?token=***&v=2"
        refused = await api.put("/v1/profiles/secrets", json=moved)
        assert refused.status_code == 422 and "send the secret again" in refused.text
        assert not leaked(refused.text)


async def test_a_calls_events_read_back_masked_in_its_detail_and_its_event_stream(control, redis_url):
    keys, call_sid, stream_sid = Keys(PREFIX), "CA" + "7" * 32, "MZ" + "7" * 32
    error = {"type": "error", "source": "function", "description": f"https://ops:{SECRETS[4]}@hooks.example.com failed",
             "details": {"accessToken": SECRETS[6]}}
    with redis_sync.Redis.from_url(redis_url) as client:
        client.hset(keys.call(stream_sid), mapping={"call_sid": call_sid, "stream_sid": stream_sid, "state": "ended"})
        client.set(keys.call_by_callsid(call_sid), stream_sid, ex=600)
        for event in (error, {"type": "call_ended", "outcome": "completed"}):
            client.xadd(keys.events(stream_sid), entries.event(orjson.dumps(event)).fields())
        client.expire(keys.call(stream_sid), 600)
    async with httpx.AsyncClient(base_url=control, headers=AUTH, timeout=10) as api:
        detail = await api.get(f"/v1/calls/{call_sid}")
        assert detail.status_code == 200 and not leaked(detail.text)
        assert detail.json()["errors"][0]["description"] == "https://***@hooks.example.com failed"
        events = await api.get(f"/v1/calls/{call_sid}/events?types=all")
        assert "event: error" in events.text and not leaked(events.text)


async def test_a_journal_recorded_with_secrets_by_an_older_version_exports_masked(control, redis_url):
    keys, call_sid, stream_sid = Keys(PREFIX), "CA" + "8" * 32, "MZ" + "8" * 32
    # What a version that did not know camelCase names or URL credentials wrote: secrets in clear.
    old = [entries.Entry(entries.Kind.JOURNAL, b"S" + orjson.dumps({"call_sid": call_sid, "stream_sid": stream_sid,
                                                                    "settings": stored_doc()}), 1_000_000),
           entries.Entry(entries.Kind.JOURNAL, b"E" + orjson.dumps({"type": "error", "clientSecret": SECRETS[7]}),
                         2_000_000)]
    with redis_sync.Redis.from_url(redis_url) as client:
        client.set(keys.call_by_callsid(call_sid), stream_sid, ex=600)
        for entry in old:
            client.xadd(keys.journal(stream_sid), entry.fields())
        client.expire(keys.journal(stream_sid), 600)
    async with httpx.AsyncClient(base_url=control, headers=AUTH, timeout=10) as api:
        export = await api.get(f"/v1/calls/{call_sid}/journal")
    assert export.status_code == 200 and not leaked(export.text)
    _header, records = from_jsonl(export.content.splitlines())
    assert AgentSettings.model_validate(records[0].json()["settings"]).think.prompt == "Sell cars."
