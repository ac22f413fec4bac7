"""deploy/k8s is locked down as shipped: default-deny network policies with one allowance per
flow, no service-account token in any pod, and pods that pass Pod Security "restricted".

The policies are evaluated here the way Kubernetes does (a pod is isolated in a direction
once any policy of that type selects it; what is allowed is the union of the rules of the
policies that select it), so each test states what one pod can reach or be reached from.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import pytest

from test_deploy_k8s import K8S, all_documents, applied_documents, container, container_env, find

SERVICES = ("edge", "agent-worker", "control")
DNS = {("UDP", 53), ("TCP", 53)}
REDIS = {("TCP", 6379)}
HTTPS = {("TCP", 443)}
PROMETHEUS_PEER = {"namespace": {"kubernetes.io/metadata.name": "monitoring"},
                   "pod": {"app.kubernetes.io/name": "prometheus"}}
INGRESS_CONTROLLER_PEER = {"namespace": {"kubernetes.io/metadata.name": "ingress-nginx"}, "pod": None}
KUBE_DNS_PEER = {"namespace": {"kubernetes.io/metadata.name": "kube-system"}, "pod": {"k8s-app": "kube-dns"}}
# Whatever a webhook URL names, the workers' "internet" must not contain any of these.
INSIDE = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8",
    "fd00:ec2::254/128",  # AWS' IPv6 instance metadata
)]


# --- evaluating the policies ---------------------------------------------------------------------------
def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def policies() -> list[dict]:
    return [d for d in applied_documents() if d["kind"] == "NetworkPolicy"]


def pod_labels(deployment: str) -> dict[str, str]:
    return find("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def rules(deployment: str, direction: str) -> list[dict]:
    """The rules that apply to the deployment's pods; the pods are isolated in that direction."""
    kind = direction.capitalize()
    selecting = [p for p in policies() if selects(p["spec"]["podSelector"], pod_labels(deployment))
                 and kind in p["spec"]["policyTypes"]]
    assert selecting, f"{deployment} is not isolated for {direction}: every flow is allowed"
    return [rule for p in selecting for rule in p["spec"].get(direction) or []]


def ports(rule: dict, deployment: str) -> set[tuple[str, int]]:
    assert rule.get("ports"), f"{deployment}: a rule without ports allows every port"
    named = {p["name"]: p["containerPort"] for p in container(deployment).get("ports", [])}
    result = set()
    for port in rule["ports"]:
        assert "endPort" not in port, f"{deployment}: port ranges are too broad here"
        number = port["port"]
        if isinstance(number, str):
            assert number in named, f"{deployment}: no container port named {number}"
            number = named[number]
        result.add((port.get("protocol", "TCP"), number))
    return result


def peers(rule: dict, direction: str) -> list[dict]:
    """Each peer as {"namespace": labels | None, "pod": labels | None} or {"ipBlock": ...}; [] = anywhere."""
    result = []
    for peer in rule.get("from" if direction == "ingress" else "to") or []:
        if "ipBlock" in peer:
            result.append({"ipBlock": peer["ipBlock"]})
            continue
        namespace = peer.get("namespaceSelector")
        assert namespace is None or not namespace.get("matchExpressions"), "keep peers to matchLabels"
        pod = peer.get("podSelector")
        result.append({"namespace": None if namespace is None else namespace.get("matchLabels", {}),
                       "pod": None if pod is None else pod.get("matchLabels", {})})
    return result


def allowed(deployment: str, direction: str) -> list[tuple[tuple, frozenset]]:
    """(peer, ports) pairs; peer () means any address."""
    flows = []
    for rule in rules(deployment, direction):
        for peer in peers(rule, direction) or [()]:
            key = () if peer == () else tuple(sorted((k, str(v)) for k, v in peer.items()))
            flows.append((key, frozenset(ports(rule, deployment))))
    return flows


def key(peer: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in peer.items()))


def public_internet(block: dict) -> bool:
    return ipaddress.ip_network(block["cidr"]).prefixlen == 0


def egress_destinations(deployment: str) -> dict[str, set]:
    """Ports allowed per kind of destination: dns, redis (private ipBlocks), internet, other."""
    found: dict[str, set] = {"dns": set(), "redis": set(), "internet": set(), "other": set()}
    for rule in rules(deployment, "egress"):
        targets = peers(rule, "egress")
        assert targets, f"{deployment}: an egress rule without `to` reaches every address"
        for peer in targets:
            if peer == KUBE_DNS_PEER:
                found["dns"] |= ports(rule, deployment)
            elif "ipBlock" in peer and public_internet(peer["ipBlock"]):
                found["internet"] |= ports(rule, deployment)
            elif "ipBlock" in peer and ipaddress.ip_network(peer["ipBlock"]["cidr"]).is_private:
                found["redis"] |= ports(rule, deployment)
            else:
                found["other"].add(str(peer))
    return found


# --- network policies ------------------------------------------------------------------------------------
def test_a_default_deny_policy_isolates_every_pod_both_ways():
    deny = [p for p in policies() if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    spec = deny[0]["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress") and not spec.get("egress"), "default-deny must allow nothing"


@pytest.mark.parametrize("deployment", SERVICES)
def test_every_pod_is_selected_by_its_own_policy(deployment):
    own = [p for p in policies() if p["spec"]["podSelector"] != {}
           and selects(p["spec"]["podSelector"], pod_labels(deployment))]
    assert own, f"{deployment} has only the default deny"
    for direction in ("ingress", "egress"):
        rules(deployment, direction)


def test_the_edge_takes_twilio_from_anywhere_and_metrics_only_from_prometheus():
    flows = allowed("edge", "ingress")
    assert ((), frozenset({("TCP", 8080)})) in flows
    assert (key(PROMETHEUS_PEER), frozenset({("TCP", 9101)})) in flows
    assert all(peer != () or ports == {("TCP", 8080)} for peer, ports in flows), "only 8080 is open to all"
    assert len(flows) == 2, flows


def test_the_edge_reaches_only_redis_and_dns():
    found = egress_destinations("edge")
    assert found == {"dns": DNS, "redis": REDIS, "internet": set(), "other": set()}


def test_the_worker_takes_nothing_but_prometheus_scrapes():
    assert allowed("agent-worker", "ingress") == [(key(PROMETHEUS_PEER), frozenset({("TCP", 9102)}))]


def test_the_worker_reaches_redis_dns_and_https_on_the_public_internet_only():
    found = egress_destinations("agent-worker")
    assert found == {"dns": DNS, "redis": REDIS, "internet": HTTPS, "other": set()}


def test_control_is_reached_only_through_the_ingress_controller_and_by_prometheus():
    flows = allowed("control", "ingress")
    assert sorted(flows) == sorted([(key(INGRESS_CONTROLLER_PEER), frozenset({("TCP", 8000)})),
                                    (key(PROMETHEUS_PEER), frozenset({("TCP", 8000)}))])


def test_control_reaches_redis_dns_and_https_on_the_public_internet_only():
    found = egress_destinations("control")
    assert found == {"dns": DNS, "redis": REDIS, "internet": HTTPS, "other": set()}


def test_the_public_internet_excludes_every_private_loopback_link_local_and_metadata_range():
    blocks = [peer["ipBlock"] for deployment in SERVICES for rule in rules(deployment, "egress")
              for peer in peers(rule, "egress") if "ipBlock" in peer and public_internet(peer["ipBlock"])]
    assert {ipaddress.ip_network(b["cidr"]).version for b in blocks} == {4, 6}, "both families, or none"
    for block in blocks:
        cidr = ipaddress.ip_network(block["cidr"])
        excluded = [ipaddress.ip_network(e) for e in block.get("except", [])]
        for inside in (n for n in INSIDE if n.version == cidr.version):
            assert any(inside.subnet_of(e) for e in excluded), f"{cidr} lets a webhook reach {inside}"


def test_redis_is_reached_on_private_addresses_only():
    for deployment in SERVICES:
        for rule in rules(deployment, "egress"):
            if ports(rule, deployment) & REDIS:
                for peer in peers(rule, "egress"):
                    assert "ipBlock" in peer and ipaddress.ip_network(peer["ipBlock"]["cidr"]).is_private, peer


# --- service accounts and pod security ------------------------------------------------------------------
@pytest.mark.parametrize("deployment", SERVICES)
def test_no_pod_gets_a_service_account_token_or_service_link_variables(deployment):
    pod = find("Deployment", deployment)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    account = find("ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def test_the_service_account_is_granted_nothing():
    kinds = {d["kind"] for d in applied_documents()}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def test_the_namespace_enforces_pod_security_restricted():
    labels = find("Namespace", "switchboard")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("deployment", SERVICES)
def test_pods_meet_the_restricted_pod_security_profile(deployment):
    pod = find("Deployment", deployment)["spec"]["template"]["spec"]
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden), forbidden
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {"emptyDir", "secret", "configMap", "projected"}, volume
    for c in pod["containers"] + pod.get("initContainers", []):
        security = c["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and not security.get("privileged")
        assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
        assert security.get("runAsUser", pod["securityContext"].get("runAsUser")) != 0


# --- what the deployed services are told --------------------------------------------------------------------
def test_deployed_edges_require_stream_tokens_and_control_serves_no_public_docs():
    assert container_env("edge")["EDGE_REQUIRE_STREAM_TOKEN"] == "true"
    assert container_env("control")["CONTROL_PUBLIC_DOCS"] == "false"


def test_the_secret_template_shows_a_tls_redis_url_with_credentials():
    secret = find("Secret", "switchboard-secrets", all_documents())
    url = urlsplit(secret["stringData"]["REDIS_URL"])
    assert url.scheme == "rediss" and url.password, "the example must show TLS and a password"


@pytest.mark.parametrize("deployment", SERVICES)
def test_redis_tls_files_can_be_mounted_read_only_from_an_optional_secret(deployment):
    pod = find("Deployment", deployment)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "redis-tls")
    assert volume["secret"] == {"secretName": "switchboard-redis-tls", "optional": True}
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == "redis-tls")
    assert mount["readOnly"] is True
    # The files the examples' REDIS_URL names are where the pods find them.
    examples = (K8S / "secret.example.yaml").read_text() + (K8S / f"{deployment.split('-')[-1]}.yaml").read_text()
    paths = re.findall(r"ssl_ca_certs=(\S+)", examples)
    assert paths and all(path.startswith(mount["mountPath"] + "/") for path in paths), paths
