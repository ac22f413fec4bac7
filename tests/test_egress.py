"""Outbound HTTP to user-configured URLs: the pure rules, then `egress.post` against real
sockets (a local receiver that counts connections, so a refusal is proven to connect nowhere).
"""

from __future__ import annotations

import random
import shutil
import ssl
import subprocess
import time
import tracemalloc
from ipaddress import ip_address

import httpx
import pytest

from switchboard import egress
from switchboard.egress_policy import (
    EgressPolicy,
    Refused,
    address_problem,
    backoff_s,
    check_addresses,
    embedded_ipv4,
    numeric_host,
)

from hookserver import OK_BODY, HookServer

DEV = EgressPolicy(allow_http=True)  # plain http allowed, nothing private
LOOPBACK_2 = EgressPolicy.parse("127.0.0.2/32", allow_http=True)  # the receiver's address only


# --- the pure rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", [
    "127.0.0.1", "0x7f000001", "0X7F000001", "2130706433", "017700000001", "127.1", "127.0.1", "0177.0.0.1",
    "0x7f.1", "127.0.0.1.", "[::1]", "::ffff:127.0.0.1", "[::ffff:7f00:1]",
])
def test_every_spelling_of_loopback_is_read_as_the_address_it_names(spelling):
    assert address_problem(numeric_host(spelling)).startswith("loopback")


@pytest.mark.parametrize("host", ["example.com", "localhost", "08.1.2.3", "1.2.3.4.5", "4294967296", "a.0x1"])
def test_names_and_impossible_numbers_are_left_to_the_resolver(host):
    assert numeric_host(host) is None


@pytest.mark.parametrize("address, problem", [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "private"), ("255.255.255.255", "private"),
    ("240.0.0.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"), ("64:ff9b:1::1", "private"),
    ("::ffff:10.0.0.1", "private, embedded in IPv6"), ("::ffff:169.254.169.254", "link-local, embedded in IPv6"),
    ("::127.0.0.1", "loopback, embedded in IPv6"), ("2002:7f00:1::", "loopback, embedded in IPv6"),
    ("2002:a9fe:a9fe::1", "link-local, embedded in IPv6"), ("64:ff9b::7f00:1", "loopback, embedded in IPv6"),
    ("2001:db8::1", "private"), ("192.0.2.1", "private"),
])
def test_addresses_inside_any_network_are_named_for_what_they_are(address, problem):
    assert address_problem(ip_address(address)) == problem


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1",
                                     "64:ff9b::808:808"])
def test_public_unicast_addresses_pass(address):
    assert address_problem(ip_address(address)) is None


def test_the_ipv4_inside_mapped_6to4_and_nat64_addresses_is_found():
    assert embedded_ipv4(ip_address("::ffff:1.2.3.4")) == ip_address("1.2.3.4")
    assert embedded_ipv4(ip_address("2002:102:304::")) == ip_address("1.2.3.4")
    assert embedded_ipv4(ip_address("64:ff9b::102:304")) == ip_address("1.2.3.4")
    assert embedded_ipv4(ip_address("2606:4700::1111")) is None


def test_the_allow_list_takes_cidrs_addresses_and_names_and_rejects_anything_else():
    policy = EgressPolicy.parse(" 10.0.0.0/8, 127.0.0.1 ,::1, Hooks.Internal. ,", allow_http=True)
    assert [str(n) for n in policy.allow_networks] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert policy.allow_hosts == {"hooks.internal"} and policy.allow_http
    assert policy.admits_host("HOOKS.internal.") and policy.admits_address(ip_address("::ffff:10.9.9.9"))
    assert not policy.admits_address(ip_address("127.0.0.2"))
    for bad in ("10.0.0.0/33", "http://x", "a b", "10.0.0.0/8/8"):
        with pytest.raises(ValueError):
            EgressPolicy.parse(bad)


def test_one_private_address_among_public_ones_refuses_the_name():
    public, private = ip_address("8.8.8.8"), ip_address("10.0.0.1")
    assert check_addresses("a.example", [public, public], EgressPolicy()) == [public]
    with pytest.raises(Refused) as refused:
        check_addresses("a.example", [public, private], EgressPolicy())
    assert refused.value.reason == "private_address" and not refused.value.retryable
    assert check_addresses("a.example", [public, private], EgressPolicy.parse("10.0.0.0/8")) == [public, private]
    assert check_addresses("a.example", [private], EgressPolicy.parse("A.example")) == [private]


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    assert backoff_s(0, 0.0) == pytest.approx(0.1) and backoff_s(0, 0.999) < 0.2
    assert backoff_s(1, 0.0) == pytest.approx(0.2) and backoff_s(3, 0.5) == pytest.approx(1.2)
    assert backoff_s(10, 0.999) < 2.0
    rng = random.Random(7)
    assert len({backoff_s(2, rng.random()) for _ in range(20)}) == 20


# --- real sockets --------------------------------------------------------------------------------

@pytest.fixture()
async def hooks():
    server = await HookServer("127.0.0.1").start()
    yield server
    await server.stop()


@pytest.fixture()
async def allowed_hooks():
    """The same receiver on 127.0.0.2, which LOOPBACK_2 allow-lists (127.0.0.1 stays forbidden)."""
    server = await HookServer("127.0.0.2").start()
    yield server
    await server.stop()


@pytest.fixture()
async def client():
    async with httpx.AsyncClient(follow_redirects=False) as http:
        yield http


async def post(client, url, policy=LOOPBACK_2, **kw):
    args = dict(content=b'{"x": 1}', headers={"Content-Type": "application/json"}, deadline_s=2.0,
                max_bytes=64 * 1024, policy=policy)
    return await egress.post(client, url, **{**args, **kw})


FORBIDDEN_FORMS = ["127.0.0.1", "0x7f000001", "2130706433", "017700000001", "127.1", "localhost",
                   "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]", "[64:ff9b::7f00:1]",
                   "0177.0.0.1"]


@pytest.mark.parametrize("host", FORBIDDEN_FORMS)
async def test_each_form_of_a_loopback_webhook_is_refused_without_connecting(hooks, client, host):
    with pytest.raises(Refused) as refused:
        await post(client, hooks.url("/ok", host=host))
    # httpx itself rejects a dotted octal address as a URL; every other form is read as the address.
    assert refused.value.reason == ("bad_url" if host == "0177.0.0.1" else "private_address"), refused.value
    assert hooks.connections == 0


async def test_ipv6_loopback_is_refused_without_connecting(client):
    try:
        server = await HookServer("::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with pytest.raises(Refused) as refused:
            await post(client, server.url("/ok"))
        assert refused.value.reason == "private_address" and server.connections == 0
    finally:
        await server.stop()


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://10.0.0.1/", "http://100.64.0.1/",
    "http://192.168.0.1/", "http://224.0.0.1/", "http://[fc00::1]/", "http://0.0.0.0/", "http://[::]/",
    "http://[::ffff:169.254.169.254]/", "http://0xa9fea9fe/",
])
async def test_metadata_private_link_local_and_multicast_addresses_are_refused_at_once(client, url):
    started = time.perf_counter()
    with pytest.raises(Refused) as refused:
        await post(client, url)
    assert refused.value.reason == "private_address"
    assert time.perf_counter() - started < 0.1  # refused before any connect attempt


async def test_a_name_resolving_to_a_private_address_is_refused_without_connecting(hooks, client):
    async def resolve(host, port):
        return [ip_address("8.8.8.8"), ip_address("127.0.0.1")]

    with pytest.raises(Refused) as refused:
        await post(client, hooks.url("/ok", host="hooks.example.test"), resolve=resolve)
    assert refused.value.reason == "private_address" and "127.0.0.1" in refused.value.detail
    assert hooks.connections == 0


async def test_https_is_required_without_the_development_flag(allowed_hooks, client):
    with pytest.raises(Refused) as refused:
        await post(client, allowed_hooks.url("/ok"), policy=EgressPolicy.parse("127.0.0.2/32"))
    assert refused.value.reason == "scheme" and allowed_hooks.connections == 0
    for bad in ("ftp://127.0.0.2/", "file:///etc/passwd", "/relative", "http://"):
        with pytest.raises(Refused) as refused:
            await post(client, bad)
        assert refused.value.reason == "bad_url", bad


async def test_the_allow_list_admits_its_addresses_in_any_spelling_and_by_name(allowed_hooks, client):
    reply = await post(client, allowed_hooks.url("/ok"))
    assert (reply.status, reply.body, reply.address) == (200, OK_BODY, "127.0.0.2")
    reply = await post(client, allowed_hooks.url("/ok", host="0x7f000002"))
    assert reply.status == 200
    seen = allowed_hooks.requests[-1]
    assert seen.headers["host"] == f"0x7f000002:{allowed_hooks.port}" and seen.body == b'{"x": 1}'
    assert seen.headers["connection"] == "close" and seen.headers["accept-encoding"] == "identity"


async def test_an_allow_listed_name_admits_whatever_it_resolves_to(hooks, client):
    policy = EgressPolicy.parse("localhost", allow_http=True)
    reply = await post(client, hooks.url("/ok", host="localhost"), policy=policy)
    assert reply.status == 200 and reply.address == "127.0.0.1"  # ::1 first where it resolves so: nobody there
    assert hooks.requests[-1].headers["host"] == f"localhost:{hooks.port}"


async def test_the_connection_goes_to_the_address_that_was_checked_with_the_original_host_header(
        allowed_hooks, client):
    # ".test" never resolves: the request can only arrive through the address the check approved.
    async def resolve(host, port):
        assert (host, port) == ("hooks.example.test", allowed_hooks.port)
        return [ip_address("127.0.0.2")]

    reply = await post(client, allowed_hooks.url("/ok", host="hooks.example.test"), resolve=resolve)
    assert reply.status == 200 and reply.address == "127.0.0.2"
    assert allowed_hooks.requests[-1].headers["host"] == f"hooks.example.test:{allowed_hooks.port}"


async def test_redirects_are_answers_not_followed(allowed_hooks, client):
    reply = await post(client, allowed_hooks.url("/redirect"))
    assert reply.status == 302 and [r.path for r in allowed_hooks.requests] == ["/redirect"]


async def test_a_server_sending_one_byte_a_second_is_cut_at_the_deadline(allowed_hooks, client):
    started = time.perf_counter()
    with pytest.raises(Refused) as refused:
        await post(client, allowed_hooks.url("/slow"), deadline_s=1.5)
    elapsed = time.perf_counter() - started
    assert refused.value.reason == "deadline" and refused.value.retryable
    assert 1.5 <= elapsed < 1.5 + 0.25, elapsed


async def test_a_20_mb_answer_is_abandoned_at_the_cap_without_being_held_in_memory(allowed_hooks, client):
    tracemalloc.start()
    try:
        with pytest.raises(Refused) as refused:
            await post(client, allowed_hooks.url("/huge"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "too_large" and not refused.value.retryable
    assert peak < 1024 * 1024, peak  # what this process allocated while 20 MB were on offer


async def test_a_declared_huge_length_or_a_compressed_answer_is_refused_before_reading(allowed_hooks, client):
    started = time.perf_counter()
    with pytest.raises(Refused) as refused:
        await post(client, allowed_hooks.url("/declared"))
    assert refused.value.reason == "too_large" and time.perf_counter() - started < 1
    with pytest.raises(Refused) as refused:
        await post(client, allowed_hooks.url("/gzip"))
    assert refused.value.reason == "encoding"


async def test_retries_follow_5xx_and_429_but_not_other_4xx_within_the_budget(allowed_hooks, client):
    failures = []

    async def run(path, attempts, budget_s=10.0):
        allowed_hooks.requests.clear()
        return await egress.post_with_retries(
            client, allowed_hooks.url(path), content=b"{}", headers={}, attempts=attempts, attempt_timeout_s=1.0,
            budget_s=budget_s, max_bytes=1024, policy=LOOPBACK_2, on_failure=lambda n, f: failures.append((n, f)),
            rng=random.Random(1))

    assert (await run("/fail", 3)).status == 500 and len(allowed_hooks.requests) == 3
    assert [n for n, _ in failures] == [0, 1, 2]
    assert (await run("/busy", 2)).status == 429 and len(allowed_hooks.requests) == 2
    assert (await run("/missing", 3)).status == 404 and len(allowed_hooks.requests) == 1
    assert (await run("/ok", 3)).status == 200 and len(allowed_hooks.requests) == 1
    # A retry is made only with time for it left in the budget, and gets only what is left.
    for budget_s, expected_attempts in ((1.2, 1), (2.4, 2), (1.6, 2)):
        started = time.perf_counter()
        with pytest.raises(Refused) as refused:
            await run("/slow", 5, budget_s=budget_s)
        elapsed = time.perf_counter() - started
        assert refused.value.reason == "deadline" and len(allowed_hooks.requests) == expected_attempts, budget_s
        assert elapsed < budget_s + 0.25, (budget_s, elapsed)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=hooks.example.test", "-addext", "subjectAltName=DNS:hooks.example.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_https_to_the_pinned_address_still_checks_the_certificate_of_the_name(certificate):
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await HookServer("127.0.0.2", tls=server_tls).start()
    trust = ssl.create_default_context(cafile=str(cert))

    async def resolve(host, port):
        return [ip_address("127.0.0.2")]

    try:
        async with httpx.AsyncClient(verify=trust) as http:
            policy = EgressPolicy.parse("127.0.0.2/32")  # https: no development flag needed
            reply = await post(http, server.url("/ok", host="hooks.example.test"), policy=policy, resolve=resolve)
            assert reply.status == 200 and server.server_names == ["hooks.example.test"]
            # A name the certificate does not cover fails verification even at the same address.
            with pytest.raises(Refused) as refused:
                await post(http, server.url("/ok", host="other.example.test"), policy=policy, resolve=resolve)
            assert refused.value.reason in ("connect", "transport")
    finally:
        await server.stop()
