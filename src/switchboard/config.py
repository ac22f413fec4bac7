"""Settings shared by every service, and the Redis client factory.

Each service subclasses `CommonSettings` with its own fields; values come from environment
variables (names = field names upper-cased) or a `.env` file, built once in `main()`.
"""

from __future__ import annotations

import asyncio
import socket
import uuid

import redis.asyncio as redis
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .keys import Keys


def default_instance_id(kind: str) -> str:
    # Hostname first: in compose/k8s it names the replica, which makes logs and metrics readable.
    return f"{kind}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class CommonSettings(BaseSettings):
    # An empty variable means "not set" (compose passes unset ones through as empty strings).
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # The URL carries everything a Redis client needs, so every client (the services, the
    # control API's blocking pool, switchboard-journal) reads the same string:
    # the password (redis://:PASSWORD@host), TLS (rediss://) and its files as query
    # parameters (?ssl_ca_certs=, ssl_certfile=, ssl_keyfile=). repr=False keeps the
    # password out of any log line or traceback that prints the settings.
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", repr=False,
        description="Redis (or Redis Cluster) URL, with the password (redis://:PASSWORD@host:6379/0) and TLS "
        "options (rediss://…?ssl_ca_certs=/path/ca.pem) in it; never logged",
    )
    redis_cluster: bool = Field(False, description="Treat REDIS_URL as a Redis Cluster node")
    redis_cluster_buckets: int = Field(
        16, ge=1, le=16384,
        description="Redis Cluster only: hash-tag buckets the calls' keys are spread over (an instance reads each "
        "bucket with one XREAD); the same on every service, and changed only with no call in progress",
    )
    key_prefix: str = Field("sb:", description="Prefix of every Redis key")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    metrics_host: str = Field("0.0.0.0", description="Bind address of /healthz, /readyz, /metrics")
    call_retention_s: int = Field(
        3600, ge=60, description="How long an ended call's record and transcript stay readable"
    )


def redis_client(settings: CommonSettings, *, blocking: bool = False) -> redis.Redis:
    """A client for normal commands, or (blocking=True) one meant to sit in XREAD BLOCK.

    Blocking reads get their own single connection with no socket timeout, so they never
    hold a pooled connection that latency-sensitive writes are waiting for.
    """
    kwargs = dict(
        # Pooled connections die with a Redis restart; the first command on one must not fail
        # the caller: reconnect and retry a few times with a short backoff.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
        health_check_interval=0 if blocking else 15,
        socket_keepalive=True,
        socket_connect_timeout=3,
        socket_timeout=None if blocking else 5,
    )
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url, **kwargs)  # type: ignore[return-value]
    # A blocking pool: a burst of bookkeeping writes queues for a connection instead of failing
    # with MaxConnectionsError once the pool is full (seen at 500 calls).
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=4 if blocking else 64, timeout=10, **kwargs
    )
    return redis.Redis(connection_pool=pool)


async def redis_reachable(client: redis.Redis, timeout_s: float = 1.0) -> bool:
    """Readiness probe: does Redis answer a PING in time?"""
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
    except (RedisError, TimeoutError, OSError):
        return False
    return True


def keys_for(settings: CommonSettings) -> Keys:
    """The key names every service of one deployment agrees on."""
    return Keys(settings.key_prefix, settings.redis_cluster_buckets if settings.redis_cluster else 0)
