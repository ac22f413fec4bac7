"""Shared fixtures: a private redis-server per test session (or REDIS_URL if given), and the test tiers.

Processes under test are started through `switchboard_dev.procs`, the same code the local
runner uses, and always against this private Redis, never the machine's default one.

Test tiers. `./dev test` runs the fast tier (`--tier=fast`); `./dev test --all`, `.ci/run`
and a plain `pytest` run everything. The tier is decided per module, so that a new test file
lands in one without anyone deciding:

- **end-to-end** (marker `e2e`): a module that starts processes, i.e. one that imports,
  anywhere in it, `subprocess`, the process helpers (`switchboard_dev.procs`,
  `switchboard_dev.stack`) or the end-to-end system (`tests/system.py`); the modules in
  `E2E_MODULES` (processes started some other way, or minutes of real time); and every test
  marked `slow`.
- **fast**: everything else: pure unit tests (codecs, the conversation and stream cores with
  a hand-moved clock) and in-process component tests (`tests/inprocess.py`: control's app,
  the edge, workers and the Deepgram emulator in the test's own event loop, on port 0,
  against the session's redis-server). The fast tier starts no Switchboard process: only
  that redis-server, and the short helper commands of the modules in `FAST_MODULES`.

Files named on the command line run whatever their tier (`./dev test tests/test_faults.py`).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from types import ModuleType

import pytest
import redis as redis_sync

from switchboard_dev import procs

LOG_ROOT = Path(os.environ.get("SB_TEST_LOGS", "/tmp/switchboard-test-logs"))

# --- tiers (see the module docstring) -------------------------------------------------------------
# Importing one of these (or anything from it) is what starts processes in a test module.
PROCESS_HELPERS = frozenset({"subprocess", "system", "switchboard_dev.procs", "switchboard_dev.stack"})
# End-to-end although they import none of PROCESS_HELPERS, each for the reason given (none yet).
E2E_MODULES: dict[str, str] = {}
# Fast although they import a process helper, each for the reason given.
FAST_MODULES: dict[str, str] = {
    "test_egress": "runs openssl once, for a test certificate",
    "test_deploy_observability": "runs promtool over the deploy files",
    "test_plumbing": "a python child for a second-signal exit status, under a second",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tier", choices=("fast", "all"), default="all",
                     help="fast: unit and in-process component tests only (./dev test); all: everything")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: starts processes (end-to-end, faults, deploy, browser, soak)")


def starts_processes(module: ModuleType) -> bool:
    """The module imports a process helper (see PROCESS_HELPERS), or is listed as an exception."""
    name = module.__name__.rpartition(".")[2]
    if name in FAST_MODULES or name in E2E_MODULES:
        return name in E2E_MODULES
    source = Path(module.__file__ or "")
    tree = ast.parse(source.read_bytes(), str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        else:
            continue
        if imported & PROCESS_HELPERS:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    verdicts: dict[str, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module.__name__ not in verdicts:
            verdicts[module.__name__] = starts_processes(module)
        if verdicts[module.__name__] or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.e2e)
    if config.getoption("--tier") != "fast" or _named_on_command_line(config):
        return
    fast = [item for item in items if not item.get_closest_marker("e2e")]
    if len(fast) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("e2e")])
        items[:] = fast  # reported as deselected, like -m


def _named_on_command_line(config: pytest.Config) -> bool:
    """Test files or ids given explicitly run whatever their tier; a bare run takes the tier."""
    given = [arg for arg in config.option.file_or_dir or () if not arg.startswith("-")]
    return any(Path(arg.split("::")[0]).resolve() != Path(config.rootpath, "tests").resolve() for arg in given)


@pytest.fixture(scope="session")
def redis_server():
    server = procs.RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return os.environ.get("SB_TEST_REDIS_URL") or redis_server.url


@pytest.fixture()
def key_prefix(request) -> str:
    """A key namespace per test, so tests sharing one Redis never see each other's calls."""
    name = request.node.name.replace("[", "-").replace("]", "")[:40]
    return f"t{abs(hash(request.node.nodeid)) % 10**8}:{name}:"


@pytest.fixture()
def redis_sync_client(redis_url):
    client = redis_sync.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def log_dir(request) -> Path:
    path = LOG_ROOT / request.node.name.replace("/", "_")[:80]
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.log"):
        old.unlink()
    return path
