"""Outbound HTTP to user-configured URLs (function webhooks, and any later hook): public only,
one deadline, a byte cap.

Each attempt resolves the host itself (through the event loop's resolver, never blocking),
checks every address with `egress_policy`, and connects to the address it checked: the URL
is rewritten to that address while the Host header and the TLS server name (SNI, and the
certificate check) keep the original host. A name whose DNS answer changes between the check
and the connection (DNS rebinding) therefore cannot steer the connection anywhere else.
`Connection: close` keeps that connection from being reused for another host that happens to
resolve to the same address, whose certificate it never presented.

Redirects are never followed (a 3xx is an answer like any other), one `asyncio.timeout`
covers connect, send, headers and body together (a server trickling one byte a second is cut
at the deadline, not at a per-read timeout), and the body is read in chunks and abandoned as
soon as it passes the cap, so a huge answer never sits in memory.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_address

import httpx

from .egress_policy import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    EgressPolicy,
    IPAddress,
    Refused,
    Target,
    check_addresses,
    check_url,
)
from .retry import Retry

__all__ = ["EgressPolicy", "Refused", "Reply", "Resolver", "post", "post_with_retries", "system_resolver"]

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
# A retry is worth making only with at least this much of the budget left.
MIN_ATTEMPT_S = 0.25


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes
    address: str  # the address that answered

    @property
    def retryable(self) -> bool:
        # The receiver failed or asked us to slow down; any other 4xx will not change.
        return self.status >= 500 or self.status == 429


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused("unresolvable", f"{host}: {exc}", retryable=True) from exc
    return [ip_address(info[4][0]) for info in infos]


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    deadline_s: float,
    max_bytes: int,
    policy: EgressPolicy,
    resolve: Resolver = system_resolver,
) -> Reply:
    """One attempt: POST `content`, return the answer (any status) or raise `Refused`."""
    try:
        async with asyncio.timeout(deadline_s):
            target = _target(url, policy)
            addresses = [target.literal] if target.literal else await resolve(target.host, target.port)
            addresses = check_addresses(target.host, addresses, policy)
            return await _post_first_reachable(client, url, target, addresses, content, headers, max_bytes,
                                               deadline_s)
    except TimeoutError as exc:
        raise Refused("deadline", f"no complete answer within {deadline_s:g} s", retryable=True) from exc


async def post_with_retries(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    attempts: int,
    attempt_timeout_s: float,
    budget_s: float,
    max_bytes: int,
    policy: EgressPolicy,
    on_failure: Callable[[int, Refused | Reply], None] = lambda attempt, failure: None,
    rng: random.Random | None = None,
    resolve: Resolver = system_resolver,
) -> Reply:
    """Up to `attempts` tries, all within `budget_s`; 5xx, 429 and transport failures retried.

    Returns the last answer (possibly an error status) or raises the last `Refused`. Each
    failed attempt is reported to `on_failure` (for metrics and logs with the caller's ids).
    """
    backoff = Retry(base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, attempts=attempts, deadline_s=budget_s,
                    min_attempt_s=MIN_ATTEMPT_S).backoff(unit=(rng or random.Random()).random,
                                                         clock=asyncio.get_running_loop().time)
    while True:
        try:
            reply = await post(client, url, content=content, headers=headers,
                               deadline_s=min(attempt_timeout_s, backoff.remaining_s), max_bytes=max_bytes,
                               policy=policy, resolve=resolve)
        except Refused as refused:
            on_failure(backoff.failures, refused)
            outcome: Refused | Reply = refused
            retry = refused.retryable
        else:
            if reply.status < 300:
                return reply
            on_failure(backoff.failures, reply)
            outcome, retry = reply, reply.retryable
        pause = backoff.next_pause(outcome if isinstance(outcome, Refused) else None) if retry else None
        if pause is None:
            if isinstance(outcome, Refused):
                raise outcome
            return outcome
        await asyncio.sleep(pause)


def _target(url: str, policy: EgressPolicy) -> Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise Refused("bad_url", str(exc)) from exc
    return check_url(parsed.scheme, parsed.host, parsed.port, policy)


async def _post_first_reachable(
    client: httpx.AsyncClient, url: str, target: Target, addresses: list[IPAddress],
    content: bytes, headers: dict[str, str], max_bytes: int, deadline_s: float,
) -> Reply:
    original = httpx.URL(url)
    fixed = {
        **headers,
        "Host": original.netloc.decode("ascii"),
        "Connection": "close",
        "Accept-Encoding": "identity",  # a compressed body could expand past the cap in one chunk
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" and target.literal is None else {}
    last: Exception | None = None
    for address in addresses:
        pinned = original.copy_with(host=str(address))
        try:
            return await _exchange(client, pinned, fixed, extensions, content, max_bytes, deadline_s, str(address))
        except httpx.ConnectError as exc:
            last = exc  # try the host's next address, as a browser would
        except httpx.TimeoutException as exc:
            raise Refused("deadline", type(exc).__name__, retryable=True) from exc
        except httpx.HTTPError as exc:
            raise Refused("transport", type(exc).__name__, retryable=True) from exc
    raise Refused("connect", f"{target.host}: {last}", retryable=True)


async def _exchange(
    client: httpx.AsyncClient, url: httpx.URL, headers: dict[str, str], extensions: dict[str, str],
    content: bytes, max_bytes: int, deadline_s: float, address: str,
) -> Reply:
    # httpx's own timeouts (per phase, per read) only back up the overall asyncio deadline.
    request = client.build_request("POST", url, content=content, headers=headers, extensions=extensions,
                                   timeout=deadline_s)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise Refused("too_large", f"the answer declares {declared} bytes, more than {max_bytes}")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Refused("encoding", f"the answer is {encoding}-encoded although identity was asked for")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise Refused("too_large", f"the answer is longer than {max_bytes} bytes")
        return Reply(response.status_code, response.headers, bytes(body), address)
    finally:
        await response.aclose()  # an abandoned body closes the connection rather than draining it
