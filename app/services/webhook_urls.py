"""Where a webhook may point: the SSRF guard, at create/update and again before each send.

A webhook URL is chosen by an admin, but the service sends from the host, which can reach
what nobody else should: the guests' network (a POST into a sandbox) and link-local
addresses (cloud metadata services). So a URL must be http(s), and every address its host
resolves to must be outside :func:`refused_networks`. The check is repeated at send time,
and the send then connects to the address that was checked (a name that resolved to an
allowed address for the check and to a guest for the connection, DNS rebinding, gets no
second lookup). Loopback and the host's other addresses stay allowed: a receiver on the
same host is a normal setup.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import socket
import typing as t
import urllib.parse

from app.errors import InvalidRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = t.Callable[[str, int, float], list[str]]
MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT_S = 5.0
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"),  # RFC 3927; cloud metadata services
              ipaddress.ip_network("fe80::/10"))  # RFC 4291 link-local unicast
_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                       thread_name_prefix="rds-resolve")


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``) and what to say (``host``)."""

    url: str
    scheme: str
    host: str  # as written, without brackets
    port: int
    path: str  # path and query
    address: str  # the checked address the send connects to

    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        shown = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{shown}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}[self.scheme]
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def refused_networks(guest_network: IpNetwork) -> tuple[IpNetwork, ...]:
    """The guests' network and link-local (plus, in :func:`refusal`, unspecified and
    multicast addresses)."""
    return (guest_network, *LINK_LOCAL)


def refusal(address: IpAddress, guest_network: IpNetwork) -> str:
    """Why a webhook may not be sent to ``address`` ("" when it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    if address.is_unspecified or address.is_multicast:
        return f"{address} is not a unicast address"
    for network in refused_networks(guest_network):
        if address.version == network.version and address in network:
            return f"{address} is in {network}" + (
                " (the guests' network)" if network == guest_network else " (link-local)")
    return ""


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses ``host`` resolves to (getaddrinfo in a pool thread: it has no timeout
    of its own).

    :raises InvalidRequest: the name does not resolve in time.
    """
    future = _resolver_pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise InvalidRequest(f"the webhook's host {host!r} did not resolve within "
                             f"{timeout:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"the webhook's host {host!r} does not resolve: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def parse(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path-and-query)`` of an http(s) URL.

    :raises InvalidRequest: not an absolute http(s) URL with a host, or with credentials,
        a fragment, whitespace or control characters.
    """
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"url: at most {MAX_URL_CHARS} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise InvalidRequest("url: must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidRequest("url: must be http:// or https://")
    if not parts.hostname:
        raise InvalidRequest("url: names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url: must not hold credentials (user:password@)")
    if parts.fragment:
        raise InvalidRequest("url: must not have a #fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or {"http": 80, "https": 443}[scheme], path


def check(url: str, guest_network: IpNetwork, resolver: Resolver = resolve,
          timeout: float = RESOLVE_TIMEOUT_S) -> Target:
    """Check a webhook URL and pick the address to send to.

    :raises InvalidRequest: a malformed URL, a host that does not resolve, or one with any
        address where webhooks may not go (all of its addresses must be allowed: which one
        a client would pick is not ours to guess).
    """
    scheme, host, port, path = parse(url)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(found) for found in resolver(host, port, timeout)]
    if not addresses:
        raise InvalidRequest(f"the webhook's host {host!r} does not resolve")
    for address in addresses:
        reason = refusal(address, guest_network)
        if reason:
            raise InvalidRequest(f"url: webhooks may not be sent to {host} ({reason})")
    return Target(url=url, scheme=scheme, host=host, port=port, path=path,
                  address=str(addresses[0]))
