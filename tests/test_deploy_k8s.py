"""deploy/k8s: valid against the Kubernetes OpenAPI schema (offline, `kubernetes-validate`),
and consistent with the services: settings names, ports, probes, drain timing, scaling.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# Oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.29.0", "1.30.0")
SETTINGS = {
    "edge": "switchboard_edge.settings:EdgeSettings",
    "agent-worker": "switchboard_worker.settings:WorkerSettings",
    "control": "switchboard_control.settings:ControlSettings",
}
HEALTH_PORT_VAR = {"edge": "METRICS_PORT", "agent-worker": "METRICS_PORT", "control": "CONTROL_PORT"}
FLUSH_S = 5  # both edge and worker give pending Redis writes this long after closing calls


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents() -> list[dict]:
    return [doc for path in manifest_files() for doc in documents(path)]


def applied_documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in documents(K8S / name)]


def find(kind: str, name: str, docs: list[dict] | None = None) -> dict:
    matches = [d for d in (docs or applied_documents()) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}"
    return matches[0]


def container(deployment: str) -> dict:
    containers = find("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_env(deployment: str) -> dict[str, object]:
    env: dict[str, object] = {}
    for source in container(deployment).get("envFrom", []):
        env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container(deployment).get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def settings_fields(service: str) -> dict:
    module, _, name = SETTINGS[service].partition(":")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        pytest.skip(f"{module} is not importable yet: {exc}")
    return cls.model_fields


def sleep_seconds(hook: dict | None) -> float:
    if not hook:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", f"unexpected preStop {command}"
    return float(command[1])


# --- schema --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_the_kubernetes_schema(path, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in documents(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_strict_validation_rejects_an_unknown_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = find("Deployment", "agent-worker")
    broken = {**doc, "spec": {**doc["spec"], "replicaz": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_except_templates_and_extras():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    top_level = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert top_level - listed == {"secret.example.yaml"}, "secret.example.yaml is a template, all else applies"
    images = {image["name"] for image in kustomization["images"]}
    used = {container(name)["image"].split(":")[0] for name in ("edge", "agent-worker", "control")}
    assert used == images


def test_everything_lives_in_the_switchboard_namespace():
    for doc in all_documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "switchboard", doc["metadata"]["name"]


# --- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_variable_given_to_a_pod_is_a_setting_it_reads(service):
    fields = settings_fields(service)
    names = {name.upper() for name in fields}
    own = {item["name"] for item in container(service).get("env", [])}
    assert sorted(own - names) == [], f"{service} gets variables it does not read"
    every_service = set().union(*({n.upper() for n in settings_fields(s)} for s in SETTINGS))
    config = find("ConfigMap", "switchboard-config")["data"].keys()
    assert sorted(config - every_service) == [], "ConfigMap keys that no service reads"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_required_settings_and_secrets_come_from_the_secret(service):
    fields = settings_fields(service)
    env = container_env(service)
    for name, field in fields.items():
        if field.is_required():
            assert name.upper() in env, f"{service} needs {name.upper()}"
    for item in container(service).get("env", []):
        if re.search(r"TOKEN|SECRET|API_KEY|REDIS_URL", item["name"]):
            assert item["valueFrom"]["secretKeyRef"]["name"] == "switchboard-secrets", item["name"]
    secret = find("Secret", "switchboard-secrets", all_documents())
    keys = {i["valueFrom"]["secretKeyRef"]["key"] for i in container(service).get("env", []) if "valueFrom" in i}
    assert keys <= secret["stringData"].keys(), "secret.example.yaml must show every key the pods read"


def test_instance_ids_are_not_configured_so_each_pod_names_itself():
    for service in SETTINGS:
        assert not {"EDGE_ID", "WORKER_ID"} & container_env(service).keys()


# --- probes, ports, security ----------------------------------------------------------------------------
@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_probes_hit_healthz_and_readyz_on_the_port_the_service_listens_on(service):
    c = container(service)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    health_port = int(container_env(service)[HEALTH_PORT_VAR[service]])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{service} {probe}"
        assert ports[get["port"]] == health_port, f"{service} {probe} port"
    annotations = find("Deployment", service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(health_port)


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_pods_run_as_the_images_non_root_user_with_a_read_only_root(service):
    pod = find("Deployment", service)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    security = container(service)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "cpu" in container(service)["resources"]["requests"], "the HPA and the scheduler need CPU requests"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_services_select_their_deployments_pods(service):
    labels = find("Deployment", service)["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = find(kind, service)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), f"{kind}/{service}"


# --- drain and scaling ---------------------------------------------------------------------------------
def test_worker_grace_period_covers_the_drain_and_the_final_flush():
    pod = find("Deployment", "agent-worker")["spec"]["template"]["spec"]
    pre_stop = sleep_seconds(container("agent-worker").get("lifecycle", {}).get("preStop"))
    drain = float(container_env("agent-worker").get("DRAIN_TIMEOUT_S") or
                  settings_fields("agent-worker")["drain_timeout_s"].default)
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + FLUSH_S + 5


def test_edge_stops_taking_streams_before_sigterm_and_gets_time_to_close_them():
    pod = find("Deployment", "edge")["spec"]["template"]["spec"]
    pre_stop = sleep_seconds(container("edge")["lifecycle"]["preStop"])
    assert pre_stop >= 3
    close_streams_s = 10  # EdgeServer.shutdown's default timeout
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + close_streams_s + FLUSH_S + 5


def test_worker_rollouts_add_capacity_before_removing_it():
    strategy = find("Deployment", "agent-worker")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert find("PodDisruptionBudget", "agent-worker")["spec"]["maxUnavailable"] == 1


def test_worker_autoscaler_scales_the_worker_deployment_on_cpu_and_scales_down_gently():
    hpa = find("HorizontalPodAutoscaler", "agent-worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent-worker"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])


def test_custom_metric_autoscaler_uses_exported_worker_metrics():
    path = K8S / "extras" / "worker-hpa-live-calls.yaml"
    text = path.read_text()
    from switchboard_worker import metrics

    for name in re.findall(r"\b(switchboard_worker_[a-z_]+)\{", text):
        assert name in (metrics.LIVE_CALLS._name, metrics.CAPACITY._name), name
