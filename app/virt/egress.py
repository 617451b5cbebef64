"""Egress policy as ipset content (pure: no I/O).

A VM's nwfilter (:mod:`app.virt.nwfilter_xml`) is the same whatever its policy; the policy lives
in three kernel ipsets named after the VM's domain:

- ``<name>-allow`` (``hash:net``): the ``allowIps`` CIDRs, when ``outboundInternet`` is true;
- ``<name>-pin`` (``hash:ip``): the ``allowIps`` entries that name one address (``/32``), when
  ``outboundInternet`` is true. Only these open the host itself (the bridge address and the
  host's other addresses): a wider range such as ``0.0.0.0/0`` contains the host but never
  opens it;
- ``<name>-dns`` (``hash:ip,port``): the resolver on the host bridge (udp and tcp port 53), when
  ``outboundInternet`` is true. (nwfilter ignores ``ipset`` on its tcp/udp rules, so the port
  is matched by the set itself.)

and two host-wide sets every VM's filter consults:

- :data:`HOST_SET` (``hash:net``): the host's own addresses, refreshed by the manager
  (:mod:`app.virt.ipsets`); dropped unless pinned;
- :data:`NEVER_SET` (``hash:net``): ranges no guest may reach whatever its policy: link-local
  (``169.254.0.0/16``, cloud metadata) and ``EGRESS_NEVER_CIDRS``.

Changing a policy is one ``ipset restore`` (:mod:`app.virt.ipsets`) that fills fresh sets and
swaps them in atomically: a few milliseconds, where redefining a running VM's nwfilter makes
libvirt rebuild all its ebtables/iptables rules (1-2 s here). That is what lets a warm-pool VM
take its caller's policy on claim, and ``PUT /v1/vms/{id}/network`` apply at once. An operator
reads a policy with ``ipset list rds-<id>-allow``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import typing as t

MAX_NAME = 31  # IPSET_MAXNAMELEN - 1
STAGING_SUFFIX = "-n"
SET_SUFFIXES = ("-allow", "-pin", "-dns")
HOST_SET = "rds-host-addrs"
NEVER_SET = "rds-never"
# Never reachable from a guest, even when an allowIps entry names them exactly.
LINK_LOCAL = "169.254.0.0/16"  # RFC 3927; cloud metadata services (169.254.169.254) live here


@dataclasses.dataclass(frozen=True)
class EgressSets:
    """What a VM's three sets hold for one policy."""

    allowed: tuple[str, ...] = ()  # CIDRs (hash:net)
    pinned: tuple[str, ...] = ()  # single addresses named as /32 (hash:ip)
    resolvers: tuple[str, ...] = ()  # "ip,proto:port" (hash:ip,port)


def allow_set(vm_name: str) -> str:
    return _checked(f"{vm_name}-allow")


def pin_set(vm_name: str) -> str:
    return _checked(f"{vm_name}-pin")


def dns_set(vm_name: str) -> str:
    return _checked(f"{vm_name}-dns")


def vm_set_names(vm_name: str) -> list[str]:
    """Every set a VM owns, with the staging names a crash may have left behind."""
    names = [_checked(vm_name + suffix) for suffix in SET_SUFFIXES]
    return [candidate for name in names for candidate in (name + STAGING_SUFFIX, name)]


def owner_of(set_name: str) -> str | None:
    """The VM name a set belongs to (``rds-0b5c1a3e-allow-n`` → ``rds-0b5c1a3e``), or None for
    host-wide sets and sets of other software."""
    if not set_name.startswith("rds-") or set_name in (HOST_SET, NEVER_SET):
        return None
    base = set_name.removesuffix(STAGING_SUFFIX) if set_name.endswith(
        tuple(suffix + STAGING_SUFFIX for suffix in SET_SUFFIXES)) else set_name
    for suffix in SET_SUFFIXES:
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return None


def egress_entries(allow_ips: t.Iterable[str], outbound_internet: bool,
                   gateway_ip: str) -> EgressSets:
    """What the VM's sets hold for a policy.

    Nothing at all without ``outboundInternet``. IPv6 entries are dropped (the guest network
    is IPv4-only). ``hash:net`` cannot hold a /0, so ``0.0.0.0/0`` becomes its two halves.
    """
    if not outbound_internet:
        return EgressSets()
    cidrs: list[str] = []
    pinned: list[str] = []
    for entry in allow_ips:
        net = ipaddress.ip_network(entry, strict=False)
        if net.version != 4:
            continue
        if net.prefixlen == 32 and str(net.network_address) not in pinned:
            pinned.append(str(net.network_address))
        halves = list(net.subnets(new_prefix=1)) if net.prefixlen == 0 else [net]
        for half in halves:
            if str(half) not in cidrs:
                cidrs.append(str(half))
    return EgressSets(allowed=tuple(cidrs), pinned=tuple(pinned),
                      resolvers=(f"{gateway_ip},udp:53", f"{gateway_ip},tcp:53"))


def never_ranges(extra: t.Iterable[str] = ()) -> list[str]:
    """The content of :data:`NEVER_SET`: link-local plus the operator's extra ranges."""
    ranges = [LINK_LOCAL]
    for entry in extra:
        net = str(ipaddress.IPv4Network(entry, strict=False))
        if net not in ranges:
            ranges.append(net)
    return ranges


def restore_script(vm_name: str, sets: EgressSets) -> str:
    """``ipset restore`` input that (re)creates the VM's sets with exactly these members.

    Each set is filled under a staging name and swapped in, so a running VM never sees a
    half-written policy.
    """
    return swap_script([(allow_set(vm_name), "hash:net", sets.allowed),
                        (pin_set(vm_name), "hash:ip", sets.pinned),
                        (dns_set(vm_name), "hash:ip,port", sets.resolvers)])


def host_sets_script(host_addresses: t.Iterable[str], never: t.Iterable[str]) -> str:
    """``ipset restore`` input for the two host-wide sets."""
    return swap_script([(HOST_SET, "hash:net", tuple(host_addresses)),
                        (NEVER_SET, "hash:net", tuple(never))])


def swap_script(sets: list[tuple[str, str, tuple[str, ...]]]) -> str:
    lines = []
    for name, kind, members in sets:
        staging = _checked(name + STAGING_SUFFIX)
        lines += [f"create {name} {kind} family inet -exist",
                  f"create {staging} {kind} family inet -exist",
                  f"flush {staging}"]
        lines += [f"add {staging} {member} -exist" for member in members]
        lines += [f"swap {staging} {name}", f"destroy {staging}"]
    return "\n".join(lines) + "\n"


def _checked(name: str) -> str:
    if len(name) > MAX_NAME:
        raise ValueError(f"ipset name {name!r} is longer than {MAX_NAME} characters")
    return name
