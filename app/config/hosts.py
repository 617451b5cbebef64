"""``HOSTS``: the libvirt hosts besides the local one (issue 17, docs/multihost.md).

A JSON list, one object per host::

    HOSTS='[{"name": "h2", "uri": "qemu+tls://h2.example/system",
             "guestCidr": "172.16.1.0/24", "reach": "route"}]'

- ``name``: how the API, /metrics and the logs call the host (``GET /v1/hosts/h2``): 1-32 of
  a-z, 0-9 and ``-``, starting with a letter; ``local`` is the ``LIBVIRT_URI`` host's.
- ``uri``: libvirt's remote driver URI of the host (``qemu+tls://``, ``qemu+ssh://``,
  ``qemu+tcp://``).
- ``guestCidr``: the host's guest subnet, overlapping neither ``NETWORK_CIDR`` nor another
  host's.
- ``reach``: how the manager reaches the host's guests; ``route`` (the default, and the only
  one so far): the guest subnet is routed to the manager.
- ``maxVms`` (optional, default ``MAX_VMS``): VMs at most on that host.
- ``imagesDir`` (optional, default :data:`DEFAULT_IMAGES_DIR`): the directory on that host
  of its ``rds-images`` storage pool, where images are shipped. The VMs' volumes (overlay
  disks, key files, console logs) are in the ``rds-vms`` pool, the directory ``rds-vms``
  beside it (:attr:`RemoteHost.vms_dir`).
- ``hostAddresses`` (optional): the host's own IPv4 addresses or networks besides its URI's
  (its other NICs, its management address when the URI names it by DNS, a storage network):
  no VM there reaches them through a wider ``allowIps`` range (only when ``allowIps`` names
  an address exactly, a /32). libvirt cannot tell them: its interface driver on Debian 12
  (udev backend, libvirt 9.0) reports no addresses, so the operator lists them.

An empty ``HOSTS`` (the default) means the local host only: the service as it always was.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import posixpath
import json
import re
import typing as t

LOCAL_HOST = "local"
DEFAULT_IMAGES_DIR = "/var/lib/libvirt/images/rds-images"
REACH_MODES = ("route",)
PLACEMENTS = ("local", "spread", "pack")  # PLACEMENT: app.services.placement
NAME = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
URI = re.compile(r"[a-z][a-z0-9+]*://[^\s]*\Z")
KEYS = {"name", "uri", "guestCidr", "reach", "maxVms", "imagesDir", "hostAddresses"}
MAX_HOST_ADDRESSES = 64  # each is one rule in every VM's filter on that host
MIN_HOST_PREFIX = 8  # wider is a mistake (it would also keep the internet out)


class HostsError(ValueError):
    """HOSTS is malformed (load_settings turns it into a ConfigError)."""


@dataclasses.dataclass(frozen=True)
class RemoteHost:
    """One ``HOSTS`` entry."""

    name: str
    uri: str
    guest_cidr: str
    reach: str = "route"
    max_vms: int | None = None  # None: MAX_VMS
    images_dir: str = DEFAULT_IMAGES_DIR
    host_addresses: tuple[str, ...] = ()  # IPv4 CIDRs (a.b.c.d/32 for an address)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.guest_cidr)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on its guest bridge (the guests' default route)."""
        return next(self.network.hosts())

    @property
    def network_name(self) -> str:
        """Its guests' libvirt network there (``rds-net-<name>``: an operator tells whose)."""
        return f"rds-net-{self.name}"

    @property
    def bridge(self) -> str:
        """That network's bridge: ``rds-br-<name>`` where it fits an interface name (15
        characters), else ``rds-br-`` and a digest of the name."""
        bridge = f"rds-br-{self.name}"
        return bridge if len(bridge) <= 15 else \
            "rds-br-" + hashlib.sha256(self.name.encode()).hexdigest()[:8]

    @property
    def vms_dir(self) -> str:
        """The directory of its ``rds-vms`` pool: ``rds-vms`` beside ``imagesDir``."""
        return posixpath.join(posixpath.dirname(self.images_dir.rstrip("/")), "rds-vms")


def parse_hosts(text: str, local_uri: str = "", local_cidr: str = "") -> tuple[RemoteHost, ...]:
    """``HOSTS`` → its entries, checked.

    :param local_uri: ``LIBVIRT_URI``, which no entry may name again.
    :param local_cidr: ``NETWORK_CIDR``, which no entry's subnet may overlap.
    :raises HostsError: naming the entry and what is wrong with it.
    """
    if not text.strip():
        return ()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HostsError(f"not JSON ({exc.msg} at character {exc.pos}); expected a list "
                         'such as [{"name": "h2", "uri": "qemu+tls://h2/system", '
                         '"guestCidr": "172.16.1.0/24"}]') from None
    if not isinstance(entries, list):
        raise HostsError("must be a JSON list of hosts")
    hosts: list[RemoteHost] = []
    subnets = {LOCAL_HOST: _subnet(local_cidr)} if local_cidr else {}
    for number, entry in enumerate(entries, start=1):
        host = _entry(number, entry)
        where = f"host {host.name!r}"
        if host.name == LOCAL_HOST or host.name in (h.name for h in hosts):
            raise HostsError(f"{where}: the name is taken ('{LOCAL_HOST}' is LIBVIRT_URI's)")
        if host.uri == local_uri or host.uri in (h.uri for h in hosts):
            raise HostsError(f"{where}: {host.uri} is already a host")
        subnet = _subnet(host.guest_cidr, where)
        for other, taken in subnets.items():
            if taken is not None and subnet.overlaps(taken):
                raise HostsError(f"{where}: guestCidr {subnet} overlaps {other}'s {taken}")
        subnets[host.name] = subnet
        hosts.append(host)
    return tuple(hosts)


def _entry(number: int, entry: t.Any) -> RemoteHost:
    if not isinstance(entry, dict):
        raise HostsError(f"entry {number} is not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise HostsError(f"entry {number}: name must be 1-32 characters of a-z, 0-9 and '-', "
                         f"starting with a letter (operators type it), got {name!r}")
    where = f"host {name!r}"
    unknown = set(entry) - KEYS
    if unknown:
        raise HostsError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(KEYS)})")
    uri, cidr = entry.get("uri"), entry.get("guestCidr")
    if not isinstance(uri, str) or not URI.match(uri):
        raise HostsError(f"{where}: uri must be a libvirt URI such as "
                         f"qemu+tls://host/system, got {uri!r}")
    if not isinstance(cidr, str):
        raise HostsError(f"{where}: guestCidr (the host's guest subnet) is required")
    reach = entry.get("reach", "route")
    if reach not in REACH_MODES:
        raise HostsError(f"{where}: reach must be one of {', '.join(REACH_MODES)}, "
                         f"got {reach!r}")
    max_vms = entry.get("maxVms")
    if max_vms is not None and (type(max_vms) is not int or max_vms < 1):
        raise HostsError(f"{where}: maxVms must be a whole number of at least 1")
    images_dir = entry.get("imagesDir", DEFAULT_IMAGES_DIR)
    if not isinstance(images_dir, str) or not images_dir.startswith("/") or \
            images_dir.rstrip("/") in ("", "/var/lib/libvirt/images"):
        raise HostsError(f"{where}: imagesDir must be an absolute directory of its own, "
                         f"got {images_dir!r}")
    return RemoteHost(name=name, uri=uri, guest_cidr=cidr, reach=reach, max_vms=max_vms,
                      images_dir=images_dir,
                      host_addresses=_host_addresses(where, entry.get("hostAddresses", [])))


def _host_addresses(where: str, value: t.Any) -> tuple[str, ...]:
    """``hostAddresses`` → its networks as ``a.b.c.d/n`` (an address is its /32), checked."""
    what = f"{where}: hostAddresses"
    if not isinstance(value, list):
        raise HostsError(f"{what} must be a list of IPv4 addresses or networks, "
                         f"got {type(value).__name__}")
    if len(value) > MAX_HOST_ADDRESSES:
        raise HostsError(f"{what} has {len(value)} entries, at most {MAX_HOST_ADDRESSES} "
                         f"(each is a rule in every VM's filter there): list networks instead")
    networks: list[ipaddress.IPv4Network] = []
    for item in value:
        shown = _shown(item)
        if not isinstance(item, str):
            raise HostsError(f"{what}: {shown} is not a string such as \"10.1.2.3\" or "
                             f'"10.1.2.0/24"')
        try:
            network = ipaddress.IPv4Network(item)
        except ValueError:
            hint = ("; IPv6 is not needed: a guest reaches no IPv6 address, the filter passes "
                    "IPv4 only" if ":" in item else "")
            raise HostsError(f"{what}: {shown} is not an IPv4 address (10.1.2.3) or network "
                             f"(10.1.2.0/24, no host bits set){hint}") from None
        if network.prefixlen < MIN_HOST_PREFIX:
            raise HostsError(f"{what}: {shown} is wider than /{MIN_HOST_PREFIX}; list the "
                             f"host's own addresses or networks")
        if network in networks:
            raise HostsError(f"{what}: {shown} is listed twice")
        networks.append(network)
    return tuple(str(network) for network in networks)


def _shown(value: t.Any, limit: int = 60) -> str:
    """``value`` as an error message shows it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _subnet(cidr: str, where: str = "NETWORK_CIDR") -> ipaddress.IPv4Network | None:
    try:
        network = ipaddress.IPv4Network(cidr)
    except ValueError as exc:
        if where == "NETWORK_CIDR":
            return None  # validated (and refused) on its own
        raise HostsError(f"{where}: guestCidr is not an IPv4 network: {exc}") from None
    if network.prefixlen > 29:
        raise HostsError(f"{where}: guestCidr must have room for guests (at most /29)")
    return network
