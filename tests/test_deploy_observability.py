"""Prometheus config, alert rules and the Grafana dashboard refer only to metrics the code exports.

The exported names come from the services' own metrics modules, read back from the
prometheus_client registry, so a renamed or missing metric fails here. promtool (Debian
package `prometheus`) validates the config and rules and runs the alert unit tests; those
checks skip when it is not installed.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "switchboard.json"
# service prefix → modules that define (or import) its metrics
SERVICE_MODULES = {
    "edge": ["switchboard_edge.metrics", "switchboard_edge.main"],
    "worker": ["switchboard_worker.metrics", "switchboard_worker.main"],
    "control": ["switchboard_control.metrics", "switchboard_control.main"],
    # Shared by every service: switchboard_task_failures_total (a supervised loop died).
    "task": ["switchboard.supervise"],
}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
}
# Labels every series gets from Prometheus, or from the histogram itself.
IMPLICIT_LABELS = {"job", "instance", "le", "deployment"}
METRIC = re.compile(r"\b(switchboard_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(switchboard_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported_metrics(service: str) -> dict[str, set[str]]:
    """Series names the service can expose → their label names, from the live registry."""
    for module in SERVICE_MODULES[service]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if module.endswith(".main"):
                pytest.skip(f"{module} is not importable yet: {exc}")
    prefix = f"switchboard_{service}_"
    series: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = set(collector._labelnames)
        for family in collector.describe():
            if family.name.startswith(prefix):
                for suffix in SUFFIXES[family.type]:
                    series[family.name + suffix] = labels
    assert series, f"no switchboard_{service}_* metric is registered"
    return series


def all_exported() -> dict[str, set[str]]:
    merged: dict[str, set[str]] = {}
    for service in SERVICE_MODULES:
        try:
            merged.update(exported_metrics(service))
        except pytest.skip.Exception:
            continue
    return merged


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def problems_in(expr: str, service: str, exported: dict[str, set[str]]) -> list[str]:
    """Unknown metric names of this service, and label names no metric of the expression has."""
    problems = []
    names = [n for n in METRIC.findall(expr) if n.startswith(f"switchboard_{service}_")]
    for name in names:
        if name not in exported:
            problems.append(f"{name} is not exported")
    for name, matchers in SELECTOR.findall(expr):
        if name in exported:
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                if label not in exported[name] | IMPLICIT_LABELS:
                    problems.append(f"{name} has no label {label}")
    known = {label for n in METRIC.findall(expr) for label in exported.get(n, set())} | IMPLICIT_LABELS
    if names and all(n in exported for n in METRIC.findall(expr)):
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (x.strip() for x in grouping.split(","))):
                if label not in known:
                    problems.append(f"grouping by {label}, which no metric in the query has")
    return problems


# --- Grafana -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
def test_dashboard_queries_use_only_exported_metrics_and_labels(service):
    exported = exported_metrics(service)
    merged = {**all_exported(), **exported}
    problems = [f"{title}: {p}" for title, expr in dashboard_queries() for p in problems_in(expr, service, merged)]
    assert problems == []


def test_dashboard_is_valid_and_uses_the_provisioned_datasource():
    board = dashboard()
    assert board["uid"] == "switchboard" and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_dashboard_provider_points_at_the_mounted_dashboards():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "switchboard.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_has_the_panels_operators_need():
    exprs = " ".join(expr for _, expr in dashboard_queries())
    required = {
        "live calls per edge and worker": ["switchboard_edge_live_calls", "switchboard_worker_live_calls"],
        "worker capacity used": ["switchboard_worker_capacity"],
        "turn latency percentiles": ["switchboard_worker_agent_turn_latency_seconds_bucket"],
        "barge-in latency percentiles": ["switchboard_edge_barge_in_latency_seconds_bucket"],
        "Deepgram connect time and errors": [
            "switchboard_worker_deepgram_connect_seconds_bucket", "switchboard_worker_deepgram_errors_total"],
        "Redis latency": ["switchboard_edge_redis_write_seconds_bucket", "switchboard_worker_redis_write_seconds_bucket"],
        "per-call lag": [
            "switchboard_worker_caller_audio_transit_seconds_bucket", "switchboard_edge_agent_audio_transit_seconds_bucket"],
        "failovers and drains": ["switchboard_worker_claims_total", "switchboard_worker_drains_total"],
        "rejected signatures, malformed frames": [
            "switchboard_edge_rejected_handshakes_total", "switchboard_edge_malformed_frames_total"],
    }
    missing = {topic: names for topic, names in required.items() if not all(n in exprs for n in names)}
    assert missing == {}
    assert "sum by (instance) (switchboard_worker_live_calls)" in exprs, "live calls per instance"
    assert "histogram_quantile(0.95" in exprs


# --- Prometheus ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
def test_alert_rules_use_only_exported_metrics_and_labels(service):
    exported = exported_metrics(service)
    merged = {**all_exported(), **exported}
    problems = [f"{r['alert']}: {p}" for r in alert_rules() for p in problems_in(r["expr"], service, merged)]
    assert problems == []


def test_alert_rules_cover_the_ways_calls_fail():
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "SwitchboardNoFreeWorkerCapacity",
        "SwitchboardDeepgramErrorRate",
        "SwitchboardTurnLatencyHigh",
        "SwitchboardCallFailovers",
        "SwitchboardRedisErrors",
        "SwitchboardNoEdge",
        "SwitchboardBackgroundTaskDied",
    } <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_prometheus_discovers_every_replica_of_each_service_through_compose_dns():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, port_var in (("edge", "METRICS_PORT"), ("agent-worker", "METRICS_PORT"), ("control", "CONTROL_PORT")):
        sd = jobs[service]["dns_sd_configs"]
        assert sd == [{"names": [service], "type": "A", "port": int(compose[service]["environment"][port_var]),
                       "refresh_interval": sd[0]["refresh_interval"]}], service
        assert "static_configs" not in jobs[service], f"{service}: static targets would miss scaled replicas"
    assert config["rule_files"] == ["alerts.yml"]


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return binary


def run_promtool(*args: str) -> None:
    result = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config():
    run_promtool("check", "config", "prometheus.yml")


def test_promtool_accepts_the_alert_rules():
    run_promtool("check", "rules", "alerts.yml")


def test_alert_rules_fire_as_their_unit_tests_expect():
    run_promtool("test", "rules", "tests/alerts_test.yml")
