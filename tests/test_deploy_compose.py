"""docker-compose.yml and .env.example: valid, scalable, configured only through documented env vars,
and safe as shipped: no default password, Redis behind `requirepass`, only the edge public.

Validated with Debian's `docker-compose` (v1.29, which reads the Compose Specification
format) and against the compose-spec JSON schema that package ships; both skip when the
package is not installed. The structural properties are checked in Python either way, and
what compose renders (interpolation applied) is checked from `docker-compose config`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from switchboard_dev import procs

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
# Switches whose name contains TOKEN but whose value is no secret.
NOT_SECRET = {"EDGE_REQUIRE_STREAM_TOKEN"}
VAR_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
# `${NAME:-default}` / `${NAME-default}` and `${NAME:?message}`, as compose reads them.
DEFAULTED_REF = re.compile(r"\$\{([A-Z0-9_]+):?-([^}]*)\}")
REQUIRED_REF = re.compile(r"\$\{([A-Z0-9_]+):\?([^}]*)\}")
# Secrets compose cannot start without; they have no default anywhere.
REQUIRED_SECRETS = {"REDIS_PASSWORD": "redis-pw-0123456789abcdef", "GRAFANA_ADMIN_PASSWORD": "grafana-pw-0123456789"}


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
def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    return binary


def compose_config(tmp_path: Path, settings: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`docker-compose config` with .env.example plus `settings` as the .env file.

    The shell's environment would win over the env file, so none of the variables the
    compose file reads is inherited from the test run.
    """
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "".join(f"{k}={v}\n" for k, v in settings.items()))
    names = set(VAR_REF.findall(COMPOSE_FILE.read_text())) | documented_env().keys()
    env = {k: v for k, v in os.environ.items() if k not in names}
    return subprocess.run(
        [docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args, "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )


def rendered(tmp_path: Path, **settings: str) -> dict:
    result = compose_config(tmp_path, {**REQUIRED_SECRETS, **settings})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_docker_compose_config_accepts_the_file_with_the_example_env_and_the_required_secrets(tmp_path):
    for profile_args in ([], ["--profile", "emulator"]):
        result = compose_config(tmp_path, REQUIRED_SECRETS, *profile_args)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(REQUIRED_SECRETS))
def test_compose_refuses_to_render_without_each_required_password(tmp_path, missing):
    for value in (None, ""):  # unset, and set but empty
        settings = {k: v for k, v in REQUIRED_SECRETS.items() if k != missing}
        if value is not None:
            settings[missing] = value
        result = compose_config(tmp_path, settings)
        assert result.returncode != 0, f"compose renders with {missing}={value!r}"
        assert f"{missing} is not set" in result.stderr, result.stderr


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


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of every port a rendered service publishes."""
    result = []
    for port in service.get("ports", []):
        assert isinstance(port, str), f"expected compose's short syntax, got {port!r}"
        host_ip, host_port, target = port.split("/")[0].rsplit(":", 2)
        result.append((host_ip, host_port, target))
    return result


def test_only_the_edge_listens_on_every_interface_the_rest_on_loopback_and_redis_nowhere(tmp_path):
    services = rendered(tmp_path)
    assert published(services["edge"]) == [("0.0.0.0", "8080", "8080")], "Twilio must reach the edge"
    assert published(services["control"]) == [("127.0.0.1", "8000", "8000")], "control sits behind a local proxy"
    assert published(services["prometheus"]) == [("127.0.0.1", "9090", "9090")]
    assert published(services["grafana"]) == [("127.0.0.1", "3000", "3000")]
    for name, service in services.items():
        for host_ip, _, _ in published(service):
            assert host_ip, f"{name} publishes without a host address, i.e. on every interface"
            assert name == "edge" or host_ip == "127.0.0.1", f"{name} is published on {host_ip}"
    assert "ports" not in services["redis"] and "expose" not in services["redis"], "Redis is never published"


def test_publish_addresses_and_ports_are_configurable(tmp_path):
    services = rendered(tmp_path, EDGE_PUBLISH_ADDR="127.0.0.1", EDGE_PUBLISH_PORT="18080",
                        CONTROL_PUBLISH_ADDR="10.1.2.3", CONTROL_PUBLISH_PORT="18000")
    assert published(services["edge"]) == [("127.0.0.1", "18080", "8080")]
    assert published(services["control"]) == [("10.1.2.3", "18000", "8000")]


def test_redis_requires_the_password_and_every_service_s_redis_url_carries_it(tmp_path):
    password = REQUIRED_SECRETS["REDIS_PASSWORD"]
    services = rendered(tmp_path, REDIS_URL="redis://attacker.example:6379/0")  # .env cannot bypass it
    command = services["redis"]["command"]
    assert command[:2] == ["redis-server", "--requirepass"] and command[2] == password, command
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password, "the health check must authenticate"
    users = [name for name, service in services.items() if "REDIS_URL" in (service.get("environment") or {})]
    assert sorted(users) == sorted(SWITCHBOARD)
    for name in users:
        url = urlsplit(services[name]["environment"]["REDIS_URL"])
        assert (url.scheme, url.hostname, url.port, url.password) == ("redis", "redis", 6379, password), name


def test_grafana_has_no_default_password_no_anonymous_access_and_no_sign_up(tmp_path, compose):
    environment = rendered(tmp_path)["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert environment["GF_USERS_ALLOW_ORG_CREATE"] == "false"


def test_deployed_edges_require_stream_tokens_unless_env_turns_them_off(tmp_path):
    assert rendered(tmp_path)["edge"]["environment"]["EDGE_REQUIRE_STREAM_TOKEN"] == "true"
    off = rendered(tmp_path, EDGE_REQUIRE_STREAM_TOKEN="false")
    assert off["edge"]["environment"]["EDGE_REQUIRE_STREAM_TOKEN"] == "false"


def test_the_deployed_control_api_serves_no_public_docs(tmp_path):
    assert rendered(tmp_path)["control"]["environment"]["CONTROL_PUBLIC_DOCS"] == "false"


def test_no_secret_has_a_default_in_the_compose_file():
    text = COMPOSE_FILE.read_text()
    for name, default in DEFAULTED_REF.findall(text):
        assert not (SECRET_NAME.search(name) and name not in NOT_SECRET), f"${{{name}}} defaults to {default!r}"
    required = {name for name, _ in REQUIRED_REF.findall(text)}
    assert required == REQUIRED_SECRETS.keys(), "these must be required with ${NAME:?message}"
    for name, message in REQUIRED_REF.findall(text):
        assert f"{name} is not set" in message, "the refusal must say which variable is missing"


def test_redis_is_on_an_internal_network_shared_only_with_the_switchboard_services(compose, services):
    assert compose["networks"]["backend"] == {"internal": True}
    assert services["redis"]["networks"] == ["backend"]
    for name, service in services.items():
        on_backend = "backend" in (service.get("networks") or ["default"])
        assert on_backend == (name in SWITCHBOARD or name == "redis"), f"{name} on the Redis network: {on_backend}"
        if name in SWITCHBOARD:
            assert "default" in service["networks"], f"{name} needs the default network for its port or egress"


def test_the_redis_health_check_fails_without_the_password(redis_server):
    """Run the compose health check's command against a password-protected redis-server."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    test = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "redis-cli", test
    server = procs.RedisServer(extra_args=("--requirepass", "health-pw-123")).start()
    try:
        def check(argv: list[str], **env: str) -> int:
            clean = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
            return subprocess.run([cli, "-p", str(server.port), *argv[2:]], env={**clean, **env},
                                  capture_output=True, timeout=10).returncode
        assert check(test, REDISCLI_AUTH="health-pw-123") == 0
        assert check(test) != 0, "the health check passes against a Redis it cannot use"
        assert check(test, REDISCLI_AUTH="wrong") != 0
        # What the old `redis-cli ping` did: exit 0 on a NOAUTH reply, so it proved nothing.
        assert check(["CMD", "redis-cli", "ping"]) == 0
    finally:
        server.stop()


def test_redis_has_a_healthcheck_and_services_wait_for_it(services):
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "-e", "ping"]
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
            if SECRET_NAME.search(key) and key not in NOT_SECRET:
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
        if field.default == "":  # an empty code span does not render: the table says "empty"
            shown = [""] if re.search(rf"^\| `{name.upper()}` \| empty \|", guide, re.M) else []
        if str(field.default) not in shown:
            stale[name.upper()] = (shown, field.default)
    assert stale == {}, f"docs/deployment.md shows other defaults (shown, actual): {stale}"


def test_defaults_compose_sets_itself_are_the_ones_env_example_shows():
    shown = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            shown[match.group(1)] = match.group(2)
    own = dict(DEFAULTED_REF.findall(COMPOSE_FILE.read_text()))
    assert {name: shown.get(name) for name in own} == own


def test_defaults_shown_in_env_example_are_the_services_defaults():
    # Names whose example value is meant to differ: compose's own Redis, a sample public URL,
    # and settings compose gives its own default (checked above).
    examples_only = {"REDIS_URL", "EDGE_PUBLIC_URL"} | dict(DEFAULTED_REF.findall(COMPOSE_FILE.read_text())).keys()
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
