"""requirements.lock: what the images install, pinned with hashes, covering pyproject's runtime
dependencies within their ranges; every runtime dependency has an upper bound."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# The images: CPython 3.11 on Linux (Dockerfile's PYTHON_IMAGE).
IMAGE_ENV = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def locked() -> dict[str, tuple[Version, list[str]]]:
    """name → (pinned version, hashes), from the `name==version \\ --hash=...` blocks."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line):
            name = canonicalize_name(match.group(1))
            pins[name] = (Version(match.group(2)), [])
        elif name and (digest := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            pins[name][1].append(digest.group(1))
    return pins


def test_every_runtime_dependency_has_an_upper_bound():
    unbounded = [str(r) for r in runtime_requirements() if not any(s.operator in ("<", "<=", "==", "~=")
                                                                   for s in r.specifier)]
    assert unbounded == [], f"give these an upper bound in pyproject.toml: {unbounded}"


def test_the_lock_pins_every_runtime_dependency_inside_its_range():
    pins = locked()
    problems = []
    for requirement in runtime_requirements():
        if requirement.marker and not requirement.marker.evaluate(IMAGE_ENV):
            continue
        names = [canonicalize_name(requirement.name), *map(canonicalize_name, requirement.extras)]
        for name in names:
            if name not in pins:
                problems.append(f"{name} (from {requirement}) is not in requirements.lock")
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned and not requirement.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{requirement.name}=={pinned[0]} is outside pyproject's {requirement.specifier}")
    assert problems == [], "run ./dev lock: " + "; ".join(problems)


def test_every_pin_is_exact_and_carries_hashes():
    pins = locked()
    assert len(pins) >= len(runtime_requirements())
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []
    assert "#    ./dev lock" in LOCK.read_text(), "made by ./dev lock (uv pip compile --generate-hashes)"


def test_the_image_installs_exactly_the_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY pyproject\.toml requirements\.lock \./$", dockerfile, re.M)
    assert re.search(r"^RUN pip install --no-cache-dir --require-hashes -r requirements\.lock$", dockerfile, re.M)
    assert re.search(r"pip install --no-cache-dir --no-deps \.", dockerfile), "the project itself adds no package"


def test_the_build_context_keeps_the_lock():
    from test_deploy_docker import dockerignore_excludes

    if dockerignore_excludes("requirements.lock"):
        pytest.skip(".dockerignore drops requirements.lock: add `!requirements.lock` after `!pyproject.toml`")
