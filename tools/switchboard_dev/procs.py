"""Starting one Switchboard process, or a private redis-server, and waiting for it to be healthy.

`stack.Stack` puts these together into a whole system for the local run, the benchmark and
the end-to-end tests; tests that need one odd process start it from here directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


@dataclass
class RedisServer:
    """A throwaway redis-server on a free port, nothing persisted."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="sb-redis-"))
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--protected-mode", "no", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open("127.0.0.1", self.port), 10, f"redis-server on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    health_url: str | None = None

    def start(self, log_dir: Path | None = None, wait_s: float = 20) -> Service:
        env = {**os.environ, **self.env}
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"{self.name}.log"
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=log)
        else:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.health_url:
            wait_until(lambda: self.alive() and http_ok(self.health_url), wait_s, f"{self.name} to be healthy")
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and self.proc.poll() is not None and self.health_url:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            return False
        return True

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def console(name: str) -> list[str]:
    """argv for one of our console scripts, from the same environment as this interpreter."""
    candidate = Path(sys.executable).with_name(name)
    return [str(candidate)] if candidate.exists() else [name]


# A developer's machine runs the simulator, the emulator, Redis and every service on a few
# cores, often beside a test suite: load thresholds this high let a busy laptop take its calls.
# Load-shedding tests and the benchmark pass their own (the services default to 0.85).
DEV_LOAD_THRESHOLD = "5"


def edge(redis_url: str, port: int, metrics_port: int, *, auth_token: str | None = None, **env: str) -> Service:
    base = {"REDIS_URL": redis_url, "EDGE_PORT": str(port), "METRICS_PORT": str(metrics_port),
            "METRICS_HOST": "127.0.0.1", "EDGE_HOST": "127.0.0.1", "EDGE_LOAD_THRESHOLD": DEV_LOAD_THRESHOLD}
    if auth_token:
        base["TWILIO_AUTH_TOKEN"] = auth_token
    else:
        base["EDGE_INSECURE_NO_SIGNATURE"] = "true"
    return Service(f"edge-{port}", console("switchboard-edge"), {**base, **env},
                   health_url=f"http://127.0.0.1:{metrics_port}/healthz")


def worker(redis_url: str, metrics_port: int, deepgram_url: str, api_key: str, *, worker_id: str,
           capacity: int = 50, **env: str) -> Service:
    base = {"REDIS_URL": redis_url, "METRICS_PORT": str(metrics_port), "METRICS_HOST": "127.0.0.1",
            "DEEPGRAM_AGENT_URL": deepgram_url, "DEEPGRAM_API_KEY": api_key, "WORKER_ID": worker_id,
            "WORKER_CAPACITY": str(capacity), "WORKER_LOAD_THRESHOLD": DEV_LOAD_THRESHOLD}
    return Service(worker_id, console("switchboard-worker"), {**base, **env},
                   health_url=f"http://127.0.0.1:{metrics_port}/healthz")


def control(redis_url: str, port: int, *, api_token: str, auth_token: str | None, edge_public_url: str,
            **env: str) -> Service:
    """The control API on loopback; without a Twilio auth token /twiml takes unsigned requests."""
    base = {"REDIS_URL": redis_url, "CONTROL_HOST": "127.0.0.1", "CONTROL_PORT": str(port),
            "CONTROL_API_TOKEN": api_token, "EDGE_PUBLIC_URL": edge_public_url}
    if auth_token:
        base["TWILIO_AUTH_TOKEN"] = auth_token
    else:
        base["CONTROL_INSECURE_TWIML"] = "true"
    return Service(f"control-{port}", console("switchboard-control"), {**base, **env},
                   health_url=f"http://127.0.0.1:{port}/healthz")


def emulator(port: int, *args: str, api_key: str | None = None) -> Service:
    argv = [*console("switchboard-deepgram-emulator"), "--host", "127.0.0.1", "--port", str(port), *args]
    if api_key:
        argv += ["--api-key", api_key]
    return Service(f"emulator-{port}", argv, {}, health_url=f"http://127.0.0.1:{port}/_emulator/healthz")


def twilio_emulator(port: int, *args: str) -> Service:
    """The Twilio REST emulator (Calls/Conferences API, signed callbacks, the media side)."""
    argv = [*console("switchboard-twilio-emulator"), "--host", "127.0.0.1", "--port", str(port), *args]
    return Service(f"twilio-emulator-{port}", argv, {}, health_url=f"http://127.0.0.1:{port}/_emulator/healthz")


@dataclass
class RedisClusterServers:
    """A throwaway Redis Cluster: `masters` redis-servers in cluster mode, no replicas."""

    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for _ in range(self.masters):
            node = RedisServer(port=_cluster_port())
            node.extra_args = ("--cluster-enabled", "yes", "--cluster-config-file", f"{node.workdir}/nodes.conf",
                               "--cluster-node-timeout", "2000")
            self.nodes.append(node.start())
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addresses,
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)

        def ready() -> bool:
            out = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(self.nodes[0].port),
                                  "cluster", "info"], capture_output=True, text=True, timeout=5).stdout
            return "cluster_state:ok" in out
        wait_until(ready, 20, "the Redis Cluster to be ready")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
