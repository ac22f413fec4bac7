"""Switchboard against the Redis a deployment runs: one that demands a password (compose's
`requirepass`), and one that speaks only TLS with a private CA and client certificates (a
managed `rediss://` Redis). Everything a service needs travels in REDIS_URL.

Real processes: a private redis-server per module, the emulator, an edge that requires
stream tokens, a worker and a control API; one call placed through POST /twiml as Twilio
would. The password must work everywhere and appear in no log.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis as redis_sync
from redis.exceptions import AuthenticationError, ResponseError

from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_dev import procs

from system import System

PASSWORD = f"pw-{secrets.token_hex(12)}"
CONTROL_TOKEN = "c" * 24


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def password_url(server: procs.RedisServer, password: str | None, scheme: str = "redis", query: str = "") -> str:
    credentials = f":{quote(password, safe='')}@" if password is not None else ""
    return f"{scheme}://{credentials}127.0.0.1:{server.port}/0{query}"


class Stack:
    """Edge (stream tokens on), one worker, a control API and the emulator, all on one REDIS_URL."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path) -> None:
        self.system = System(redis_url, prefix, log_dir, workers=1, edge_env={"EDGE_REQUIRE_STREAM_TOKEN": "true"})
        self.log_dir = log_dir

    def start(self) -> Stack:
        self.system.start()
        _service, self.control_port = self.system.add_control(api_token=CONTROL_TOKEN)
        return self

    def stop(self) -> None:
        self.system.stop()

    def readiness(self) -> dict[str, int]:
        worker_port = self.system.worker_services[0].env["METRICS_PORT"]
        return {
            "edge": status(f"http://127.0.0.1:{self.system.edge_metrics}/readyz"),
            "worker": status(f"http://127.0.0.1:{worker_port}/readyz"),
            "control": status(f"http://127.0.0.1:{self.control_port}/readyz"),
        }

    async def call_through_twiml(self) -> None:
        result = await run_call(SimConfig(url="unused", twiml_url=f"http://127.0.0.1:{self.control_port}/twiml",
                                          emulator_url=self.system.emulator_http,
                                          script=CallScript(turns=1, lead_ms=300)))
        assert result.ok, result.failure
        assert result.byte_exact_in is True and result.byte_exact_out is True
        assert len(result.streams) == 1, "the stream was accepted with its TwiML's token"
        record = self.system.wait_call_ended(result.stream_sid)
        assert record["outcome"] == "completed"
        async with httpx.AsyncClient() as http:
            detail = await http.get(f"http://127.0.0.1:{self.control_port}/v1/calls/{result.call_sid}",
                                    headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})
        assert detail.status_code == 200, detail.text

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log")))


def start_edge_alone(redis_url: str, log_dir: Path) -> procs.Service:
    port, metrics_port = procs.free_port(), procs.free_port()
    return procs.edge(redis_url, port, metrics_port, KEY_PREFIX="redisauth-alone:").start(log_dir)


def edge_readiness(edge: procs.Service) -> int:
    return status(edge.health_url.replace("/healthz", "/readyz"))


# --- the URL stays out of anything printed ----------------------------------------------------------------
def test_settings_never_print_the_redis_url():
    from switchboard.config import CommonSettings

    settings = CommonSettings(_env_file=None, redis_url=f"rediss://:{PASSWORD}@redis.example:6379/0")
    assert settings.redis_url.endswith("@redis.example:6379/0")
    for text in (repr(settings), str(settings), f"{settings!r}"):
        assert PASSWORD not in text and "redis_url" not in text


# --- requirepass -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def protected_redis():
    server = procs.RedisServer(extra_args=("--requirepass", PASSWORD)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def protected_stack(protected_redis, tmp_path_factory):
    stack = Stack(password_url(protected_redis, PASSWORD), "redisauth:", tmp_path_factory.mktemp("redis-auth"))
    try:
        yield stack.start()
    finally:
        stack.stop()


def test_the_redis_refuses_a_client_without_the_password(protected_redis):
    with redis_sync.Redis.from_url(password_url(protected_redis, None)) as client:
        with pytest.raises((AuthenticationError, ResponseError)):
            client.set("redisauth:probe", "x")
    with redis_sync.Redis.from_url(password_url(protected_redis, "wrong-password")) as client:
        with pytest.raises((AuthenticationError, ResponseError)):
            client.ping()


async def test_edge_worker_and_control_take_a_call_through_a_password_protected_redis(protected_stack):
    assert protected_stack.readiness() == {"edge": 200, "worker": 200, "control": 200}
    await protected_stack.call_through_twiml()


def test_an_edge_without_the_password_is_alive_but_not_ready_and_logs_no_credential(protected_redis, tmp_path):
    wrong = f"wrong-{secrets.token_hex(8)}"
    for url in (password_url(protected_redis, None), password_url(protected_redis, wrong)):
        edge = start_edge_alone(url, tmp_path / "alone")
        try:
            procs.wait_until(lambda edge=edge: edge_readiness(edge) == 503, 10, "the edge to report Redis unusable")
        finally:
            edge.stop()
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "alone").glob("*.log"))
    assert wrong not in logs


async def test_no_service_writes_the_redis_password_to_its_log(protected_stack):
    await protected_stack.call_through_twiml()
    logs = protected_stack.logs()
    assert logs, "the services logged nothing"
    assert PASSWORD not in logs and quote(PASSWORD, safe="") not in logs


# --- TLS (rediss://) with a private CA and client certificates -------------------------------------------
def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=30)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=switchboard-test-ca")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=switchboard-test-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", *ext)
    return {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    files = make_certificates(tmp_path_factory.mktemp("redis-tls"))
    server = procs.RedisServer()
    # The plain port is switched off: the only way in is TLS with a client certificate.
    server.extra_args = ("--tls-port", str(server.port), "--port", "0", "--requirepass", PASSWORD,
                         "--tls-cert-file", str(files["server.pem"]), "--tls-key-file", str(files["server.key"]),
                         "--tls-ca-cert-file", str(files["ca.pem"]), "--tls-auth-clients", "yes")
    try:
        server.start()
    except TimeoutError:
        server.stop()
        pytest.skip("this redis-server was built without TLS")
    yield server, files
    server.stop()


def tls_url(server: procs.RedisServer, files: dict[str, Path], *, ca: bool = True) -> str:
    query = f"?ssl_certfile={files['client.pem']}&ssl_keyfile={files['client.key']}"
    if ca:
        query += f"&ssl_ca_certs={files['ca.pem']}"
    return password_url(server, PASSWORD, "rediss", query)


async def test_edge_worker_and_control_take_a_call_through_redis_over_tls(tls_redis, tmp_path_factory):
    server, files = tls_redis
    with redis_sync.Redis.from_url(password_url(server, PASSWORD)) as plain:
        with pytest.raises(redis_sync.ConnectionError):
            plain.ping()  # nothing listens without TLS
    stack = Stack(tls_url(server, files), "redistls:", tmp_path_factory.mktemp("redis-tls-stack"))
    try:
        stack.start()
        assert stack.readiness() == {"edge": 200, "worker": 200, "control": 200}
        await stack.call_through_twiml()
        assert PASSWORD not in stack.logs()
    finally:
        stack.stop()


def test_rediss_verifies_the_server_certificate_by_default(tls_redis, tmp_path):
    server, files = tls_redis
    with redis_sync.Redis.from_url(tls_url(server, files, ca=False)) as client:
        with pytest.raises(redis_sync.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            client.ping()
    edge = start_edge_alone(tls_url(server, files, ca=False), tmp_path)
    try:
        procs.wait_until(lambda: edge_readiness(edge) == 503, 10, "the edge to refuse an unverified Redis")
    finally:
        edge.stop()
