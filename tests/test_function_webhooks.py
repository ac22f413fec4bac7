"""Function webhooks go out, never in: end to end through the real worker, edge, Deepgram
emulator and call simulator. The worker allow-lists only 127.0.0.2 (with plain http, as a
development setup would); receivers on 127.0.0.1 stand for everything inside.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from switchboard import settings_store
from switchboard.agent_settings import AgentSettings
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity

from hookserver import HookServer
from system import System, scrape

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    env = {"WORKER_EGRESS_ALLOW": "127.0.0.2/32", "WORKER_EGRESS_ALLOW_HTTP": "true"}  # no FUNCTION_SECRET
    sb = System(redis_url, "hooks:", tmp_path_factory.mktemp("hooks"), workers=1, worker_env=env).start()
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
async def inside():
    server = await HookServer("127.0.0.1").start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def allowed():
    server = await HookServer("127.0.0.2").start()
    yield server
    await server.stop()


def call_with(system: System, functions: list[dict], **script) -> tuple[CallIdentity, SimConfig]:
    """A call whose turn n makes the agent call functions[n - 1]."""
    directives = [f"emulator: on turn {n} call {f['name']} {{}}" for n, f in enumerate(functions, 1)]
    prompt = "\n".join(["You look things up.", *directives])
    doc = AgentSettings.model_validate({"think": {"prompt": prompt, "functions": functions}})
    ident = CallIdentity.random()
    with system.redis() as client:
        client.set(system.keys.call_settings(ident.call_sid), settings_store.encode(doc, 1))
    config = SimConfig(url=system.edge_url, emulator_url=system.emulator_http,
                       script=CallScript(lead_ms=300, utterance_ms=600, turns=len(functions), **script))
    return ident, config


def hook(name: str, url: str, timeout_s: float = 2, retries: int = 0) -> dict:
    return {"name": name, "description": f"{name} lookup", "webhook": {"url": url, "timeout_s": timeout_s,
                                                                       "retries": retries}}


def responses(system: System, call_sid: str) -> list[dict]:
    return [m["body"] for s in system.emulator_sessions(call_sid) for m in s["control_messages"]
            if m["type"] == "FunctionCallResponse"]


def worker_metrics(system: System) -> int:
    return int(system.worker_services[0].env["METRICS_PORT"])


def worker_log(system: System) -> list[dict]:
    path: Path = system.worker_services[0].log_path
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_webhooks_to_loopback_and_metadata_are_refused_and_the_call_goes_on_byte_exact(system, inside, allowed):
    functions = [
        hook("loopback", inside.url("/ok")),
        hook("ipv6_loopback", f"http://[::1]:{inside.port}/ok"),
        hook("metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        hook("allowed", allowed.url("/ok")),
    ]
    ident, config = call_with(system, functions)
    refused_before = scrape(worker_metrics(system), "switchboard_worker_webhook_refused_total",
                            'reason="private_address"')
    result = await run_call(config, ident)
    assert result.ok, result.failure
    assert result.byte_exact_out is True and result.byte_exact_in is True, (result.out_reasons, result.in_reasons)
    answers = [orjson.loads(r["content"]) for r in responses(system, ident.call_sid)]
    assert answers[:3] == [{"error": f"function {name} failed: its webhook address is not allowed"}
                           for name in ("loopback", "ipv6_loopback", "metadata")]
    assert answers[3] == {"slots": ["10:00", "14:30"]}
    assert inside.connections == 0 and [r.path for r in allowed.requests] == ["/ok"]
    assert scrape(worker_metrics(system), "switchboard_worker_webhook_refused_total",
                  'reason="private_address"') - refused_before == 3
    refusals = [line for line in worker_log(system)
                if line["msg"].startswith("function webhook attempt") and line.get("call_sid") == ident.call_sid]
    assert [line["function"] for line in refusals] == ["loopback", "ipv6_loopback", "metadata"]
    assert all(line["function_call_id"] and line["stream_sid"] == result.stream_sid for line in refusals)
    assert "169.254.169.254 (link-local)" in refusals[2]["msg"]
    events = [e for e in system.events(result.stream_sid) if e["type"] == "function_call"]
    assert [e["outcome"] for e in events] == ["error", "error", "error", "ok"]


async def test_a_trickling_webhook_is_cut_at_its_deadline_and_a_huge_one_at_the_byte_cap(system, allowed):
    functions = [hook("slow", allowed.url("/slow"), timeout_s=2), hook("huge", allowed.url("/huge"), timeout_s=5,
                                                                       retries=1)]
    ident, config = call_with(system, functions)
    worker_pid = system.worker_services[0].proc.pid
    peak_before = peak_rss_kib(worker_pid)
    result = await run_call(config, ident)
    peak_after = peak_rss_kib(worker_pid)
    assert result.ok, result.failure
    assert result.byte_exact_out is True and result.byte_exact_in is True, (result.out_reasons, result.in_reasons)
    answers = [orjson.loads(r["content"]) for r in responses(system, ident.call_sid)]
    assert answers == [{"error": "function slow failed: no complete answer within 2 s"},
                       {"error": f"function huge failed: the answer is longer than {MAX_BYTES} bytes"}]
    assert len(system.emulator_sessions(ident.call_sid)) == 1  # Deepgram was never sent anything it would refuse
    events = {e["name"]: e for e in system.events(result.stream_sid) if e["type"] == "function_call"}
    assert 2000 <= events["slow"]["ms"] < 2000 + 300, events["slow"]
    assert len(orjson.dumps(events["huge"])) < 1024
    print(f"worker peak RSS {peak_before} KiB before the call, {peak_after} KiB after "
          f"(+{peak_after - peak_before} KiB); slow function answered in {events['slow']['ms']} ms")
    assert peak_after - peak_before < 8 * 1024
    too_large = scrape(worker_metrics(system), "switchboard_worker_webhook_refused_total", 'reason="too_large"')
    assert too_large >= 1 and scrape(worker_metrics(system), "switchboard_worker_webhook_refused_total",
                                     'reason="deadline"') >= 1


def test_the_worker_warns_once_at_start_that_webhooks_go_out_unsigned(system):
    warnings = [line for line in worker_log(system) if re.search(r"FUNCTION_SECRET is not set", line["msg"])]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert scrape(worker_metrics(system), "switchboard_worker_webhooks_unsigned") == 1
    relaxed = [line for line in worker_log(system) if line["msg"].startswith("webhook egress relaxed")]
    assert len(relaxed) == 1 and "127.0.0.2/32" in relaxed[0]["msg"]


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
