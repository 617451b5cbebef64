"""Egress policy as ipset content (pure: no I/O).

A VM's nwfilter (:mod:`app.virt.nwfilter_xml`) is the same whatever its policy; the policy lives
in two kernel ipsets named after the VM's domain:

- ``<name>-allow`` (``hash:net``): the ``allowIps`` CIDRs, when ``outboundInternet`` is true;
- ``<name>-dns`` (``hash:ip,port``): the resolver on the host bridge (udp and tcp port 53), when
  ``outboundInternet`` is true. (nwfilter ignores ``ipset`` on its tcp/udp rules, so the port
  is matched by the set itself.)

Changing a policy is one ``ipset restore`` (:mod:`app.virt.ipsets`) that fills fresh sets and
swaps them in atomically: a few milliseconds, where redefining a running VM's nwfilter makes
libvirt rebuild all its ebtables/iptables rules (1-2 s here). That is what lets a warm-pool VM
take its caller's policy on claim, and ``PUT /v1/vms/{id}/network`` apply at once. An operator
reads a policy with ``ipset list rds-<id>-allow``.
"""
from __future__ import annotations

import ipaddress

MAX_NAME = 31  # IPSET_MAXNAMELEN - 1
STAGING_SUFFIX = "-n"


def allow_set(vm_name: str) -> str:
    return _checked(f"{vm_name}-allow")


def dns_set(vm_name: str) -> str:
    return _checked(f"{vm_name}-dns")


def egress_entries(allow_ips: tuple[str, ...], outbound_internet: bool,
                   gateway_ip: str) -> tuple[list[str], list[str]]:
    """What the two sets hold for a policy: (allowed CIDRs, DNS resolver ``ip,proto:port``).

    Nothing at all without ``outboundInternet``. IPv6 entries are dropped (the guest network
    is IPv4-only). ``hash:net`` cannot hold a /0, so ``0.0.0.0/0`` becomes its two halves.
    """
    if not outbound_internet:
        return [], []
    cidrs: list[str] = []
    for entry in allow_ips:
        net = ipaddress.ip_network(entry, strict=False)
        if net.version != 4:
            continue
        halves = list(net.subnets(new_prefix=1)) if net.prefixlen == 0 else [net]
        for half in halves:
            if str(half) not in cidrs:
                cidrs.append(str(half))
    return cidrs, [f"{gateway_ip},udp:53", f"{gateway_ip},tcp:53"]


def restore_script(vm_name: str, cidrs: list[str], resolvers: list[str]) -> str:
    """``ipset restore`` input that (re)creates both sets with exactly these members.

    Each set is filled under a staging name and swapped in, so a running VM never sees a
    half-written policy.
    """
    lines = []
    for name, kind, members in ((allow_set(vm_name), "hash:net", cidrs),
                                (dns_set(vm_name), "hash:ip,port", resolvers)):
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
