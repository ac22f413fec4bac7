"""docker-compose.yml and .env.example: valid, scalable, configured only through documented env vars.

Validated with Debian's `docker-compose` (v1.29, which reads the Compose Specification
format) and against the compose-spec JSON schema that package ships; both skip when the
package is not installed. The structural properties are checked in Python either way.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# compose service → (Dockerfile target, settings class) of the Switchboard services.
SWITCHBOARD = {
    "edge": ("edge", "switchboard_edge.settings:EdgeSettings"),
    "agent-worker": ("worker", "switchboard_worker.settings:WorkerSettings"),
    "control": ("control", "switchboard_control.settings:ControlSettings"),
}
# Set per replica from its hostname, or bind addresses the containers must keep.
NOT_FROM_ENV = {"EDGE_ID", "WORKER_ID", "EDGE_HOST", "METRICS_HOST", "CONTROL_HOST"}
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY)")
VAR_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def documented_env() -> dict[str, str | None]:
    """Names in .env.example: active lines with their value, commented-out `# NAME=default` lines."""
    names: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        active = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        commented = re.match(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if active:
            names[active.group(1)] = active.group(2)
        elif commented:
            names.setdefault(commented.group(1), None)
    return names


def load_settings_class(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        pytest.skip(f"{module} is not importable yet: {exc}")


def duration_s(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value):
        total += float(number) * units[unit]
    return total


# --- validity --------------------------------------------------------------------------------------
def test_docker_compose_config_accepts_the_file_with_the_example_env():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    for profile_args in ([], ["--profile", "emulator"]):
        result = subprocess.run(
            [binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), *profile_args, "config", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr


def compose_spec_schema() -> dict | None:
    for path in sorted(glob.glob("/usr/lib/python3*/dist-packages/compose/config/compose_spec.json")):
        return json.loads(Path(path).read_text())
    return None


def test_compose_file_matches_the_compose_spec_schema(compose):
    schema = compose_spec_schema()
    if schema is None:
        pytest.skip("compose_spec.json not found (it ships with Debian's docker-compose package)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        validator = jsonschema.Draft201909Validator(schema)
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_spec_format_has_no_obsolete_version_key(compose):
    assert "version" not in compose


# --- scaling, health, ordering -----------------------------------------------------------------------
def test_agent_worker_can_be_scaled(services):
    worker = services["agent-worker"]
    for key in ("ports", "container_name", "hostname"):
        assert key not in worker, f"agent-worker must not set {key}: --scale needs distinct replicas"
    assert "WORKER_ID" not in worker.get("environment", {}), "every replica would share one worker id"


def test_agent_worker_stop_grace_period_outlasts_the_drain(services):
    worker = services["agent-worker"]
    settings_cls = load_settings_class(SWITCHBOARD["agent-worker"][1])
    drain = documented_env().get("DRAIN_TIMEOUT_S") or settings_cls.model_fields["drain_timeout_s"].default
    grace = duration_s(worker["stop_grace_period"])
    assert grace >= float(drain) + 5, f"stop_grace_period {grace}s leaves no margin over DRAIN_TIMEOUT_S={drain}"


def test_edge_and_control_publish_ports_and_observability_binds_to_localhost(services):
    assert any(str(p).endswith(":8080") for p in services["edge"]["ports"])
    assert any(str(p).endswith(":8000") for p in services["control"]["ports"])
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), f"{name} is not public"
    assert "ports" not in services["redis"], "Redis stays on the compose network"


def test_redis_has_a_healthcheck_and_services_wait_for_it(services):
    assert services["redis"]["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    for name in SWITCHBOARD:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services and "healthcheck" in services[dependency], f"{name} → {dependency}"
            assert spec["condition"] == "service_healthy"


def test_switchboard_services_build_from_the_dockerfile_targets(services):
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    for name, (target, _) in {**SWITCHBOARD, "deepgram-emulator": ("emulator", None)}.items():
        build = services[name]["build"]
        assert build["context"] == "." and build["target"] == target and target in targets, name
        assert "command" not in services[name] and "entrypoint" not in services[name], (
            f"{name}: run the image's own CMD so compose starts what the image tests start"
        )
        assert services[name]["restart"] == "unless-stopped"


def test_third_party_images_are_pinned(services):
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: pin {image} to a release"


def test_observability_config_is_mounted_from_deploy(services):
    prometheus_mounts = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus_mounts
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana_mounts


# --- configuration only through documented environment variables ------------------------------------
def referenced_variables(compose: dict) -> set[str]:
    return set(VAR_REF.findall(COMPOSE_FILE.read_text()))


def test_every_variable_the_compose_file_reads_is_documented_in_env_example(compose, services):
    documented = documented_env()
    passed_through = {
        key for service in services.values() for key, value in (service.get("environment") or {}).items()
        if value is None
    }
    missing = sorted((referenced_variables(compose) | passed_through) - documented.keys())
    assert missing == [], f"document these in .env.example: {missing}"


def test_env_example_documents_nothing_the_compose_file_ignores(compose, services):
    used = referenced_variables(compose) | {
        key for service in services.values() for key in (service.get("environment") or {})
    }
    stale = sorted(documented_env().keys() - used)
    assert stale == [], f".env.example documents variables compose never passes on: {stale}"


def test_env_example_sets_no_secret(compose):
    for name, value in documented_env().items():
        if SECRET_NAME.search(name):
            assert value is None, f"{name} must stay commented out in .env.example"


def test_switchboard_secrets_are_only_passed_through(services):
    for name in SWITCHBOARD:
        for key, value in services[name]["environment"].items():
            if SECRET_NAME.search(key):
                assert value is None, f"{name}: {key} must come from the environment, with no default"


@pytest.mark.parametrize("service", sorted(SWITCHBOARD))
def test_every_setting_of_a_service_can_be_set_from_the_environment(services, service):
    settings_cls = load_settings_class(SWITCHBOARD[service][1])
    environment = services[service]["environment"]
    fields = {name.upper() for name in settings_cls.model_fields}
    assert sorted(fields - NOT_FROM_ENV - environment.keys()) == [], f"{service} cannot receive these settings"
    assert sorted(environment.keys() - fields) == [], f"{service} gets variables it does not read"
    assert not (NOT_FROM_ENV & environment.keys())


def test_fixed_ports_match_what_prometheus_and_the_images_expect(services):
    assert services["edge"]["environment"]["EDGE_PORT"] == "8080"
    assert services["edge"]["environment"]["METRICS_PORT"] == "9101"
    assert services["agent-worker"]["environment"]["METRICS_PORT"] == "9102"
    assert services["control"]["environment"]["CONTROL_PORT"] == "8000"


@pytest.mark.parametrize("service", sorted(SWITCHBOARD))
def test_deployment_guide_documents_every_setting(service):
    settings_cls = load_settings_class(SWITCHBOARD[service][1])
    guide = (ROOT / "docs" / "deployment.md").read_text()
    missing = sorted(name.upper() for name in settings_cls.model_fields if f"`{name.upper()}`" not in guide)
    assert missing == [], f"docs/deployment.md does not describe {missing}"
    stale = {}
    for name, field in settings_cls.model_fields.items():
        if field.default is None or field.default_factory is not None or field.is_required():
            continue
        shown = re.findall(rf"^\| `{name.upper()}` \| `([^`]*)` \|", guide, re.M)
        if str(field.default) not in shown:
            stale[name.upper()] = (shown, field.default)
    assert stale == {}, f"docs/deployment.md shows other defaults (shown, actual): {stale}"


def test_defaults_shown_in_env_example_are_the_services_defaults():
    # Names whose example value is meant to differ: compose's own Redis, a sample public URL.
    examples_only = {"REDIS_URL", "EDGE_PUBLIC_URL"}
    defaults: dict[str, object] = {}
    for _, spec in SWITCHBOARD.values():
        for name, field in load_settings_class(spec).model_fields.items():
            if field.default is not None and field.default_factory is None and field.is_required() is False:
                defaults.setdefault(name.upper(), field.default)
    shown = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            shown[match.group(1)] = match.group(2)
    wrong = {}
    for name, value in shown.items():
        if name in examples_only or name not in defaults:
            continue
        default = defaults[name]
        if isinstance(default, bool):
            same = value.lower() == str(default).lower()
        elif isinstance(default, (int, float)):
            same = float(value) == float(default)
        else:
            same = value == str(default)
        if not same:
            wrong[name] = (value, default)
    assert wrong == {}, f".env.example shows stale defaults (shown, actual): {wrong}"
