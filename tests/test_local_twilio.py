"""A real number with the local run: the demo call works with Twilio's signatures and stream
tokens on, and `--print-twilio-setup` prints URLs and TwiML that the control API accepts.

Real processes against the test session's Redis; the "public" hosts are never contacted:
requests go to the local ports, signed for the public URLs as Twilio would sign them.
"""

from __future__ import annotations

import os
import re
import subprocess
from urllib.parse import urlsplit

import httpx
import pytest

from switchboard import signature
from switchboard_callsim.twiml import Connect, Redirect
from switchboard_callsim.twiml import parse as parse_twiml
from switchboard_dev import procs

AUTH = "local-twilio-auth-token"
EDGE_PUBLIC = "wss://edge.example.test/twilio"
CONTROL_PUBLIC = "https://control.example.test"
FORM = {"AccountSid": "AC" + "1" * 32, "CallSid": "CA" + "2" * 32, "From": "+14155550100", "To": "+14155550199"}


def local_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN", "EDGE_PUBLIC_URL", "CONTROL_PUBLIC_URL",
                        "CONTROL_API_TOKEN", "EDGE_REQUIRE_STREAM_TOKEN")}
    return {**env, "REDIS_URL": redis_url, **extra}


def test_the_demo_call_works_with_twilio_signatures_stream_tokens_and_public_urls(redis_url, tmp_path):
    env = local_env(redis_url, KEY_PREFIX="localtw:", TWILIO_AUTH_TOKEN=AUTH, EDGE_PUBLIC_URL=EDGE_PUBLIC,
                    CONTROL_PUBLIC_URL=CONTROL_PUBLIC)
    ports = [str(procs.free_port()) for _ in range(3)]
    run = subprocess.run(
        [*procs.console("switchboard-local"), "--exit-after-call", "--edge-port", ports[0], "--control-port", ports[1],
         "--emulator-port", ports[2], "--log-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, (run.stdout, run.stderr[-2000:])
    assert "assistant: Agent reply 2 to caller utterance 2." in run.stdout
    assert "ok; agent audio byte-exact: True" in run.stdout


def test_the_setup_command_names_what_is_missing(redis_url):
    run = subprocess.run([*procs.console("switchboard-local"), "--print-twilio-setup"],
                         env=local_env(redis_url), capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "EDGE_PUBLIC_URL and CONTROL_PUBLIC_URL not set" in run.stderr

    run = subprocess.run([*procs.console("switchboard-local"), "--print-twilio-setup"],
                         env=local_env(redis_url, EDGE_PUBLIC_URL="ws://127.0.0.1:8080/twilio",
                                       CONTROL_PUBLIC_URL=CONTROL_PUBLIC), capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "EDGE_PUBLIC_URL must look like wss://<edge-host>/twilio" in run.stderr


@pytest.fixture(scope="module")
def control(redis_url, tmp_path_factory):
    port = procs.free_port()
    service = procs.control(redis_url, port, api_token="t" * 24, auth_token=AUTH, edge_public_url=EDGE_PUBLIC,
                            KEY_PREFIX="localsetup:", CONTROL_PUBLIC_URL=CONTROL_PUBLIC, CONTROL_ADMISSION="off")
    service.start(tmp_path_factory.mktemp("local-setup"))
    yield f"http://127.0.0.1:{port}"
    service.stop()


def post_signed(control: str, public_url: str, form: dict[str, str]) -> httpx.Response:
    """POST to the local control API what Twilio would POST to `public_url`, signed for it."""
    parts = urlsplit(public_url)
    local = f"{control}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return httpx.post(local, data=form, headers={"X-Twilio-Signature": signature.compute(AUTH, public_url, form)})


def test_the_printed_webhook_and_twiml_bin_are_what_control_verifies(redis_url, control):
    run = subprocess.run([*procs.console("switchboard-local"), "--print-twilio-setup", "--profile", "sales"],
                         env=local_env(redis_url, EDGE_PUBLIC_URL=EDGE_PUBLIC, CONTROL_PUBLIC_URL=CONTROL_PUBLIC + "/"),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    webhook = re.search(r"^\s+(https://\S+/twiml\S*)$", out, re.M).group(1)
    assert webhook == f"{CONTROL_PUBLIC}/twiml?profile=sales"
    assert "127.0.0.1:8080" in out and "127.0.0.1:8000" in out  # both tunnels
    assert out.index("EDGE_PUBLIC_URL=") < out.index("./dev run")  # the URLs are set before starting

    answer = post_signed(control, webhook, FORM)
    assert answer.status_code == 200, answer.text
    connect = next(v for v in parse_twiml(answer.content).verbs if isinstance(v, Connect))
    assert connect.url == EDGE_PUBLIC and connect.parameters["profile"] == "sales" and "sb_token" in connect.parameters

    bin_twiml = parse_twiml(out[out.index("<Response>"): out.index("</Response>") + len("</Response>")])
    stream, redirect = bin_twiml.verbs
    assert isinstance(stream, Connect) and stream.url == EDGE_PUBLIC and stream.parameters == {"profile": "sales"}
    assert isinstance(redirect, Redirect) and redirect.method == "POST"
    # Twilio runs the <Redirect> when the stream ends: a call the Bin connected continues here.
    follow = post_signed(control, redirect.url, {**FORM, "CallSid": "CA" + "3" * 32})
    assert follow.status_code == 200, follow.text
    assert next(v for v in parse_twiml(follow.content).verbs if isinstance(v, Connect)).url == EDGE_PUBLIC

    # The signature really is checked against the public URL: signed for the local one, refused.
    local_only = httpx.post(f"{control}/twiml", data=FORM,
                            headers={"X-Twilio-Signature": signature.compute(AUTH, f"{control}/twiml", FORM)})
    assert local_only.status_code == 403


def test_the_readme_shows_the_twiml_bin_the_command_prints():
    from html import unescape
    from pathlib import Path

    from switchboard_dev.twilio_setup import TwilioSetup

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    guide = readme[readme.index("### A real phone number"):readme.index("## Architecture")]
    shown = guide[guide.index("<Response>"):guide.index("</Response>") + len("</Response>")]
    printed = TwilioSetup("wss://<edge-host>/twilio", "https://<control-host>", "default").twiml_bin()
    assert shown == unescape(printed)  # the README shows placeholders unescaped
    assert guide.index("EDGE_PUBLIC_URL=") < guide.index("./dev run"), "the public URLs are set before starting"
    assert "CONTROL_PUBLIC_URL=" in guide and "POST" in guide and "/twiml/continue" in guide
