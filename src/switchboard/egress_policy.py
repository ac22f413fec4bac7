"""Where Switchboard's outbound HTTP may go: the pure rules (no sockets, no DNS).

Webhook URLs come from whoever can write settings, and the function arguments that reach
them from an LLM a caller can talk into anything, so a webhook must not become a way into
the network the worker runs in (Redis, the cloud metadata service, other pods). Only public
unicast addresses are reachable unless the operator's allow-list admits more (development
and tests). An address is judged by what it is, not by how it is spelled: IPv4 written the
way `inet_aton` reads it (`0x7f000001`, `2130706433`, `017700000001`, `127.1`) and IPv4
wrapped in IPv6 (mapped, compatible, 6to4, NAT64) are unwrapped before the check.

`egress.py` applies these rules to the addresses it resolved, right before connecting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Literal
from urllib.parse import unquote

from .retry import Retry

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Retries of one outbound request: 0.1-0.2 s, then 0.2-0.4 s, ... up to 1-2 s.
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.2, 2.0

# Why an outbound request did not produce an answer. Each is a label value of the callers'
# refusal metric, so the set stays small and fixed.
Reason = Literal[
    "bad_url",          # not an absolute http(s) URL with a host
    "scheme",           # http while https is required
    "private_address",  # the host is, or resolves to, an address that is not public
    "unresolvable",     # DNS gave no address
    "connect",          # no resolved address accepted a connection
    "transport",        # the connection broke mid-exchange
    "deadline",         # the attempt's overall deadline passed
    "too_large",        # the answer is longer than the byte cap
    "encoding",         # a compressed answer although identity was asked for
]

_CGNAT = IPv4Network("100.64.0.0/10")          # RFC 6598 carrier-grade NAT: inside someone's network
_NAT64 = IPv6Network("64:ff9b::/96")           # RFC 6052 well-known prefix: the last 32 bits are IPv4
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")   # RFC 8215 local-use translation: a private network
_ULA = IPv6Network("fc00::/7")
_NUMERIC_PART = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class Refused(Exception):
    """The request was not (or not completely) made; `reason` is one of `Reason`."""

    def __init__(self, reason: Reason, detail: str, *, retryable: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail
        self.retryable = retryable


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's exceptions to "public https only"; the default admits nothing more."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    allow_http: bool = False

    @classmethod
    def parse(cls, allow: str, *, allow_http: bool = False) -> EgressPolicy:
        """`allow` is a comma list of CIDRs, addresses or host names; ValueError on a bad entry."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in allow.split(","):
            entry = raw.strip()
            if not entry:
                continue
            literal = numeric_host(entry.split("/", 1)[0])
            if literal is not None:
                prefix = entry.partition("/")[2]
                networks.append(ip_network(f"{literal}/{prefix}" if prefix else str(literal), strict=False))
            elif "/" in entry or not re.fullmatch(r"[A-Za-z0-9_.-]+", entry):
                raise ValueError(f"egress allow-list entry {entry!r} is neither a CIDR nor a host name")
            else:
                hosts.add(_canonical_host(entry))
        return cls(tuple(networks), frozenset(hosts), allow_http)

    def admits_host(self, host: str) -> bool:
        return _canonical_host(host) in self.allow_hosts

    def admits_address(self, address: IPAddress) -> bool:
        candidates = [address, *([inner] if (inner := embedded_ipv4(address)) else [])]
        return any(a.version == n.version and a in n for a in candidates for n in self.allow_networks)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to call it (Host header, TLS SNI)."""

    scheme: str
    host: str                 # as written (IDNA-encoded), without brackets
    port: int
    literal: IPAddress | None  # the host was an address, in whatever spelling: no DNS needed


def check_url(scheme: str, host: str, port: int | None, policy: EgressPolicy) -> Target:
    """Scheme and host rules that need no resolution; raises `Refused`."""
    scheme = scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise Refused("bad_url", "an absolute http(s) URL with a host is required")
    if scheme == "http" and not policy.allow_http:
        raise Refused("scheme", "https is required (plain http only with the development flag)")
    literal = numeric_host(host)
    return Target(scheme, host, port or (443 if scheme == "https" else 80), literal)


def check_addresses(host: str, addresses: list[IPAddress], policy: EgressPolicy) -> list[IPAddress]:
    """The addresses to try, in order; raises `Refused` if any is not public and not allowed.

    One bad address refuses them all: a name that resolves to a public and a private address
    is either misconfigured or an attack, and trying the public one first would still leave
    the private one in play on the next attempt.
    """
    if not addresses:
        raise Refused("unresolvable", f"{host} has no address", retryable=True)
    if policy.admits_host(host):
        return _unique(addresses)
    for address in addresses:
        problem = address_problem(address)
        if problem is not None and not policy.admits_address(address):
            raise Refused("private_address", f"{host} is {address} ({problem})")
    return _unique(addresses)


def address_problem(address: IPAddress) -> str | None:
    """Why a connection to this address could reach inside, or None for a public unicast address."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    inner = embedded_ipv4(address)
    if inner is not None:
        problem = address_problem(inner)
        return f"{problem}, embedded in IPv6" if problem else None
    if address.is_link_local:
        return "link-local"  # 169.254.169.254 is the cloud metadata service
    if address.is_multicast:
        return "multicast"
    if address in _CGNAT or address in _NAT64_LOCAL or address in _ULA or address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries to the same host: mapped, compatible, 6to4, NAT64."""
    if not isinstance(address, IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d, the deprecated "compatible" form
        return IPv4Address(int(address))
    return None


def numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host names, read as `inet_aton` and browsers do; None for a name.

    `getaddrinfo` would turn `0x7f000001` or `127.1` into 127.0.0.1 without asking DNS, so
    the checks must see those spellings as the address they are.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return IPv6Address(unquote(text))  # "%25" is how a URL writes a zone id's "%"
        except ValueError:
            return None
    text = text.removesuffix(".")
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    try:
        values = [_inet_aton_part(p) for p in parts]
    except ValueError:
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for value in head:
        number = number << 8 | value
    return IPv4Address(number << (8 * (4 - len(head))) | last)


def backoff_s(attempt: int, unit: float, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Pause before retry `attempt + 1`: exponential, half of it jittered by `unit` in [0, 1).

    The jitter keeps many calls whose webhook failed at the same moment from retrying in step.
    The shared `Retry` policy decides it; this is its egress shape.
    """
    return Retry(base_s=base_s, cap_s=cap_s).pause_s(attempt, unit)


def _inet_aton_part(part: str) -> int:
    lowered = part.lower()
    if lowered.startswith("0x"):
        return int(lowered[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)  # ValueError for "08": not numeric after all, so a name
    return int(part)


def _canonical_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _unique(addresses: list[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))
