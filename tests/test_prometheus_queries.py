"""Grafana's panels and Prometheus' alerts, run for real: a real Prometheus (Debian's
`prometheus`) scrapes a running stack with the project's own scrape config (its DNS discovery
swapped for the test ports), simulated calls are placed, and every dashboard query and alert
expression is evaluated through Prometheus' HTTP API. Values are checked against what the
test knows (calls held by the simulator, Deepgram's turn latencies recorded per call), and in
two faults (a full fleet, a killed worker) the alerts that should fire do fire.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev import procs

from console_browser import Background
from system import System

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = ROOT / "deploy/grafana/dashboards/switchboard.json"
PREFIX = "promq:"
CAPACITY = 2  # per worker, two workers: a fleet of 4 slots
RATE_WINDOW = "30s"  # what Grafana's $__rate_interval becomes here (scrapes every second)
# Queries of things this healthy run never does (errors, refusals, functions, drains, dead air):
# their metrics carry labels that appear with the first occurrence, so the result is empty.
# Each is still evaluated (a syntax or type error fails the test).
ONLY_WHEN_IT_HAPPENS = re.compile(
    r"deepgram_errors_total|rejected_handshakes_total|malformed_frames_total|function_calls_total|dead_air_total"
    r"|admissions_total\{outcome=~\"rejected|commands_total|admission_queue_wait|claims_total|replies_total\{outcome=\"interrupted\""
)
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if t.get("expr")]


def rules_for_test(tmp: Path) -> Path:
    """alerts.yml with the same expressions, and `for:` shortened so that a test can see them fire."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = tmp / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def config_for_test(tmp: Path, targets: dict[str, list[int]]) -> Path:
    """deploy/prometheus/prometheus.yml, each job's DNS discovery replaced by this stack's ports."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="900ms", evaluation_interval="1s")
    config["rule_files"] = [str(rules_for_test(tmp))]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) <= set(jobs), f"the scrape config lacks {set(targets) - set(jobs)}"
    for name, ports in targets.items():
        jobs[name].pop("dns_sd_configs", None)
        jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in ports]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, config: Path, data: Path) -> None:
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)
        procs.wait_until(lambda: procs.http_ok(f"{self.url}/-/ready"), 30, "prometheus to be ready")

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> set[str]:
        alerts = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; firing: {self.firing()}")
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    if not Path(PROMETHEUS).exists():
        pytest.skip("no prometheus binary: install Debian's `prometheus` package (.ci/run does)")
    sb = System(redis_url, PREFIX, tmp_path_factory.mktemp("promq"), workers=2, capacity=CAPACITY).start()
    sb.stack.start_control()
    tmp = tmp_path_factory.mktemp("prometheus")
    prom = Prometheus(config_for_test(tmp, {"edge": [sb.edge_metrics], "agent-worker": sb.stack.worker_metrics,
                                        "control": [sb.stack.control_port]}), tmp / "data")
    yield sb, prom
    prom.stop()
    sb.stop()


def place(sb: System, hold_ms: int) -> tuple[CallIdentity, Background]:
    ident = CallIdentity.random({"From": "+14155550100", "To": "+14155550199"})
    # Through the TwiML webhook, as Twilio starts a call: admission and /twiml metrics too.
    config = SimConfig(url=sb.edge_url, emulator_url=sb.emulator_http, twiml_url=f"{sb.stack.control_url}/twiml",
                       script=CallScript(turns=2, lead_ms=300, utterance_ms=600, gap_ms=300, hold_ms=hold_ms))
    return ident, Background(run_call(config, ident))


def record(sb: System, ident: CallIdentity) -> dict[str, str]:
    """The call's record, by callSid (through TwiML the stream's sid is the edge's to learn)."""
    with sb.redis() as client:
        stream_sid = client.get(sb.keys.call_by_callsid(ident.call_sid))
    return sb.call_record(stream_sid.decode()) if stream_sid else {}


def hang_up(sb: System, ident: CallIdentity) -> None:
    answer = httpx.post(f"{sb.stack.control_url}/v1/calls/{ident.call_sid}/hangup", json={}, timeout=10,
                        headers={"Authorization": f"Bearer {sb.stack.control_token}"})
    assert answer.status_code == 200, answer.text


def buckets_around(prom: Prometheus, metric: str, low: float, high: float) -> tuple[float, float]:
    """The histogram's bucket bounds that enclose [low, high]: as precise as a quantile can be."""
    bounds = sorted({float(s["metric"]["le"]) for s in prom.query(metric)} - {float("inf")})
    below = max([b for b in bounds if b <= low], default=0.0)
    above = min([b for b in bounds if b >= high], default=float("inf"))
    return below, above


def test_every_panel_and_alert_runs_with_plausible_values_and_faults_fire_their_alerts(stack):
    sb, prom = stack
    # Every target is scraped with the project's own job names.
    prom.wait(lambda: prom.value('count(up{job=~"edge|agent-worker|control"} == 1)') == 4, 30, "all four targets up")

    # --- one call that ends (the ended-calls panels), then three held (of four slots) ----------------
    first, call = place(sb, hold_ms=0)
    assert call.wait(60).ok
    procs.wait_until(lambda: record(sb, first).get("state") == "ended", 15, "the first call to end")
    held = [place(sb, hold_ms=120_000) for _ in range(3)]
    for ident, _ in held:
        procs.wait_until(lambda ident=ident: record(sb, ident).get("turns") == "2", 30, "two turns")
    prom.wait(lambda: prom.value("sum(switchboard_worker_live_calls)") == 3, 30, "three live calls in prometheus")
    prom.wait(lambda: prom.value("max(switchboard_edge_fleet_free_slots)") == 1, 30, "one free slot")
    time.sleep(2)  # a couple more scrapes, so rates over the window have two points after the turns

    results: dict[str, list[dict]] = {}
    for title, expr in dashboard_queries():
        results[expr] = prom.query(expr.replace("$__rate_interval", RATE_WINDOW))
        if not ONLY_WHEN_IT_HAPPENS.search(expr):
            assert results[expr], f"panel {title!r}: no series for {expr}"
    # Calls in progress are what the simulator holds, on every side.
    assert prom.value("sum(switchboard_edge_live_calls)") == 3
    assert prom.value("sum(switchboard_worker_live_calls)") == 3
    assert prom.value("max(switchboard_control_live_calls)") == 3
    assert prom.value("sum(switchboard_worker_live_calls) / sum(switchboard_worker_capacity)") == pytest.approx(0.75)
    assert prom.value("max(switchboard_edge_fleet_capacity_slots)") == 2 * CAPACITY
    # Turn latency: the quantiles lie within the range the calls' own records measured.
    measured = [e["stages"]["deepgram_total"] / 1000 for ident, _ in held for e in sb.events(record(sb, ident)["stream_sid"])
                if e["type"] == "turn_latency" and "deepgram_total" in e.get("stages", {})]
    assert len(measured) >= 6
    low, high = buckets_around(prom, "switchboard_worker_agent_turn_latency_seconds_bucket", min(measured), max(measured))
    for q in ("0.5", "0.95", "0.99"):
        value = prom.value(f"histogram_quantile({q}, sum by (le) (rate(switchboard_worker_agent_turn_latency_seconds_bucket[{RATE_WINDOW}])))")
        assert value is not None and low <= value <= high, (q, value, low, high, measured)
    transit = prom.value(f"histogram_quantile(0.5, sum by (le) (rate(switchboard_worker_caller_audio_transit_seconds_bucket[{RATE_WINDOW}])))")
    assert transit is not None and 0 < transit < 0.05  # a few ms inside Switchboard
    # Over the last seconds only (all three calls were up): 8 kB/s of mu-law per call.
    assert prom.value("sum(rate(switchboard_edge_audio_bytes_in_total[5s]))") == pytest.approx(3 * 8000, rel=0.25)
    # Every alert expression evaluates; in this healthy state none of the critical ones fires.
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            prom.query(rule["expr"])
    time.sleep(3)
    assert not prom.firing() & {"SwitchboardNoFreeWorkerCapacity", "SwitchboardFleetFull", "SwitchboardInstanceDown",
                                "SwitchboardNoEdge", "SwitchboardCallFailovers", "SwitchboardRedisErrors"}

    # --- fault 1: a full fleet ------------------------------------------------------------------
    fourth = place(sb, hold_ms=120_000)
    held.append(fourth)
    prom.wait(lambda: {"SwitchboardFleetFull", "SwitchboardNoFreeWorkerCapacity"} <= prom.firing(), 40,
              "the full-fleet alerts")
    assert prom.value("sum(switchboard_worker_live_calls)") == 4

    # --- fault 2: a worker killed mid-call --------------------------------------------------------
    # Free the second worker first, so that it can take over the calls of the one killed.
    victim_id = f"{PREFIX}w1"
    on_victim = [(i, c) for i, c in held if record(sb, i).get("worker") == victim_id]
    others = [(i, c) for i, c in held if (i, c) not in on_victim]
    for ident, call in others:
        hang_up(sb, ident)
        call.wait(30)
    prom.wait(lambda: "SwitchboardFleetFull" not in prom.firing(), 40, "the fleet to have room again")
    assert on_victim, "no call on the worker to kill"
    sb.worker_services[0].kill()
    prom.wait(lambda: "SwitchboardInstanceDown" in prom.firing(), 60, "the killed-worker alert")
    for ident, _ in on_victim:
        procs.wait_until(lambda ident=ident: record(sb, ident).get("worker") == f"{PREFIX}w2", 30,
                         "the takeover")
    assert len(prom.query('up{job="agent-worker"} == 0')) == 1
    prom.wait(lambda: prom.value('sum(switchboard_worker_claims_total{kind="takeover"})') == len(on_victim), 30,
              "the takeovers in prometheus")
    STATE["on_victim"] = on_victim


STATE: dict[str, object] = {}


def test_calls_taken_over_from_a_killed_worker_fire_the_failover_alert(stack):
    sb, prom = stack
    on_victim = STATE.get("on_victim")
    if not on_victim:
        pytest.skip("the fault test above did not get as far as the takeover")
    try:
        prom.wait(lambda: "SwitchboardCallFailovers" in prom.firing(), 20, "the failover alert")
    finally:
        for ident, call in on_victim:  # type: ignore[attr-defined]
            hang_up(sb, ident)
            call.wait(30)
