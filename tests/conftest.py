"""Shared fixtures: a private redis-server per test session (or REDIS_URL if given).

Processes under test are started through `switchboard_dev.procs`, the same code the local
runner uses, and always against this private Redis, never the machine's default one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis as redis_sync

from switchboard_dev import procs

LOG_ROOT = Path(os.environ.get("SB_TEST_LOGS", "/tmp/switchboard-test-logs"))


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
