"""Per-VM nwfilter XML (pure: no I/O, no libvirt).

The filter is named after the VM's domain (``rds-<short id>``) and referenced from its NIC with
the parameters ``IP`` (the guest's address) and ``GATEWAY`` (the host bridge); libvirt adds
``MAC``. Egress is denied by default; see the rule comments for what is let through and why.

Anti-spoofing is written out here (seven ebtables rules in the root chain) instead of
referencing libvirt's ``clean-traffic``: the same checks (own MAC, own IPv4 source, own ARP
sender, nothing but IPv4 and ARP), but ``clean-traffic`` spreads them over five sub-chains per
direction, and instantiating those took ~1 s of the ~1.6 s libvirt spends on a VM's filter.

The filter is applied to the VM's network port (its tap) through a libvirt filter binding
(:func:`build_binding_xml`), not a ``<filterref>`` in the domain: that lets the manager
instantiate it (~0.8 s of ebtables/iptables calls) while the guest boots or resumes, and
attach the port to the bridge only once it is in place (see :mod:`app.virt.taps`).

The rules do not depend on the VM's policy: what a guest may reach is the content of its three
ipsets and of two host-wide ones (:mod:`app.virt.egress`), which change in milliseconds without
touching the filter. In order, for a connection the guest opens:

1. never: link-local (cloud metadata) and the operator's ``EGRESS_NEVER_CIDRS``;
2. DNS to the bridge's resolver when ``outboundInternet``;
3. the host bridge only when pinned (named exactly, as a /32); other guests never;
4. other pinned addresses (the host's other addresses included);
5. the host's own addresses: never through a wider range;
6. ``allowIps``; everything else is dropped.

The same 'out' rules guard traffic that ends on the host (libvirt's ``HI-`` chains in INPUT)
and traffic the host forwards (``FO-`` chains): both need bridge netfilter
(``net.bridge.bridge-nf-call-iptables=1``), which host setup turns on and ``/healthz`` checks.
"""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

from app.virt.egress import HOST_SET, NEVER_SET, allow_set, dns_set, pin_set

# Rule priorities: lower runs first. Blocks that must win over allow-lists come first.
PRIO_SPOOFING = -900  # layer 2 (ebtables): before anything is accepted
PRIO_L2_ALLOWED = -800
PRIO_L2_OTHER = -700
PRIO_MANAGER = 100
PRIO_NEVER = 120  # link-local and the operator's never-ranges: before any accept
PRIO_DNS = 150  # before the gateway block: DNS is allowed whenever outboundInternet is
PRIO_GATEWAY_PINNED = 190  # the bridge itself, when allowIps names it exactly (a /32)
PRIO_BLOCK_GUESTS = 200
PRIO_PINNED = 300  # addresses named exactly: may be one of the host's own
PRIO_BLOCK_HOST = 350  # the host's own addresses, through any wider range
PRIO_ALLOW = 400
PRIO_ESTABLISHED = 500
PRIO_DROP_ALL = 1000
NEW_OR_REPLY = "NEW,ESTABLISHED,RELATED"


def build_filter_xml(name: str, uuid: str, guest_network: str, gateway_ip: str) -> str:
    """Filter XML for one VM.

    :param guest_network: the guests' CIDR; never reachable from a guest, whatever the policy.
    """
    allowed, pinned, resolver = allow_set(name), pin_set(name), dns_set(name)
    root = _filter_root(name, uuid)
    _comment(root, "the manager's SSH control connection from the host bridge")
    _manager_ssh(root)

    _comment(root, f"never, whatever the policy: link-local (RFC 3927, cloud metadata) and the "
                   f"operator's ranges, in {NEVER_SET}")
    _rule(root, "drop", "out", PRIO_NEVER, "all", ipset=NEVER_SET, ipsetflags="dst")
    _comment(root, f"DNS to the resolver on the host bridge: address and port in {resolver} "
                   f"(outboundInternet)")
    _allow(root, PRIO_DNS, "all", ipset=resolver, ipsetflags="dst,dst")
    _comment(root, f"the host bridge only if allowIps names it exactly: {pinned}")
    _allow(root, PRIO_GATEWAY_PINNED, "all", dstipaddr="$GATEWAY", ipset=pinned,
           ipsetflags="dst")
    _block_guests(root, ipaddress.IPv4Network(guest_network))

    _comment(root, f"addresses allowIps names exactly (/32), the host's own included: {pinned}")
    _allow(root, PRIO_PINNED, "all", ipset=pinned, ipsetflags="dst")
    _comment(root, f"the host's own addresses ({HOST_SET}): never through a wider range")
    _rule(root, "drop", "out", PRIO_BLOCK_HOST, "all", ipset=HOST_SET, ipsetflags="dst")

    _comment(root, f"allowIps: destinations in {allowed} (empty without outboundInternet)")
    _allow(root, PRIO_ALLOW, "all", ipset=allowed, ipsetflags="dst")
    return _finish(root)


def build_binding_xml(port: str, mac: str, filter_name: str, owner_name: str, owner_uuid: str,
                      parameters: dict[str, str]) -> str:
    """Filter binding XML: apply ``filter_name`` to the tap ``port`` of a VM.

    :param mac: the VM's MAC (the filter's ``$MAC``).
    :param parameters: the filter's other variables (``IP``, ``GATEWAY``).
    """
    root = ET.Element("filterbinding")
    owner = ET.SubElement(root, "owner")
    ET.SubElement(owner, "name").text = owner_name
    ET.SubElement(owner, "uuid").text = owner_uuid
    ET.SubElement(root, "portdev", {"name": port})
    ET.SubElement(root, "mac", {"address": mac})
    filterref = ET.SubElement(root, "filterref", {"filter": filter_name})
    for name, value in parameters.items():
        ET.SubElement(filterref, "parameter", {"name": name, "value": value})
    return _serialise(root)


def _rule(root: ET.Element, action: str, direction: str, priority: int, element: str,
          **attrs: str) -> None:
    """One ``<rule>`` whose match is ``<element attrs/>`` (``mac``/``ip``/``arp`` are
    ebtables rules, ``tcp``/``all`` iptables rules)."""
    rule = ET.SubElement(root, "rule", {"action": action, "direction": direction,
                                        "priority": str(priority)})
    ET.SubElement(rule, element, attrs)


def _allow(root: ET.Element, priority: int, element: str, **attrs: str) -> None:
    """An 'out' accept of new connections (and their replies) matching ``<element attrs/>``."""
    _rule(root, "accept", "out", priority, element, **attrs, state=NEW_OR_REPLY)


def _ip_rule(root: ET.Element, action: str, priority: int, cidr: str, **attrs: str) -> None:
    """An 'out' rule on the destinations in ``cidr``."""
    network = ipaddress.IPv4Network(cidr, strict=False)
    _rule(root, action, "out", priority, "all", dstipaddr=str(network.network_address),
          dstipmask=str(network.prefixlen), **attrs)


def _comment(root: ET.Element, text: str) -> None:
    root.append(ET.Comment(f" {text} "))


def _filter_root(name: str, uuid: str) -> ET.Element:
    """A VM's ``<filter>``: named after its domain, anti-spoofing first."""
    root = ET.Element("filter", {"name": name, "chain": "root"})
    ET.SubElement(root, "uuid").text = uuid
    _anti_spoofing(root)
    return root


def _block_guests(root: ET.Element, network: ipaddress.IPv4Network) -> None:
    _comment(root, "other guests and the host bridge: never, even with 0.0.0.0/0 allowed")
    _rule(root, "drop", "out", PRIO_BLOCK_GUESTS, "all", dstipaddr="$GATEWAY")
    _ip_rule(root, "drop", PRIO_BLOCK_GUESTS, str(network))


def _finish(root: ET.Element) -> str:
    """Replies to what was let out, everything else dropped; the filter's XML."""
    _comment(root, "replies to connections the guest was allowed to open")
    _rule(root, "accept", "in", PRIO_ESTABLISHED, "all", state="ESTABLISHED,RELATED")
    _comment(root, "everything else, both ways")
    _rule(root, "drop", "inout", PRIO_DROP_ALL, "all")
    return _serialise(root)


def _serialise(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _anti_spoofing(root: ET.Element) -> None:
    """Layer 2 (ebtables): frames from the VM carry its own MAC, IPv4 source and ARP sender;
    only IPv4 and ARP pass either way (no IPv6, RARP or other ethertypes)."""
    _comment(root, "anti-spoofing: the VM's own MAC, IP and ARP sender only")
    _rule(root, "drop", "out", PRIO_SPOOFING, "mac", match="no", srcmacaddr="$MAC")
    _rule(root, "drop", "out", PRIO_SPOOFING, "ip", match="no", srcipaddr="$IP")
    _rule(root, "drop", "out", PRIO_SPOOFING, "arp", match="no", arpsrcmacaddr="$MAC")
    _rule(root, "drop", "out", PRIO_SPOOFING, "arp", match="no", arpsrcipaddr="$IP")
    _comment(root, "IPv4 (filtered below) and ARP; any other ethertype is dropped")
    _rule(root, "accept", "inout", PRIO_L2_ALLOWED, "ip")
    _rule(root, "accept", "inout", PRIO_L2_ALLOWED, "arp")
    _rule(root, "drop", "inout", PRIO_L2_OTHER, "mac")


def _manager_ssh(root: ET.Element) -> None:
    _rule(root, "accept", "out", PRIO_MANAGER, "tcp", dstipaddr="$GATEWAY", srcportstart="22",
          state="ESTABLISHED")
    _rule(root, "accept", "in", PRIO_MANAGER, "tcp", srcipaddr="$GATEWAY", dstportstart="22",
          state="NEW,ESTABLISHED")


def build_remote_filter_xml(name: str, uuid: str, guest_network: str, allow_ips: tuple[str, ...],
                            outbound_internet: bool, never: tuple[str, ...] = (),
                            hosts: tuple[str, ...] = ()) -> str:
    """Filter XML for a VM on a remote host (issue 17), referenced from its NIC with ``IP`` and
    ``GATEWAY`` (that host's bridge address).

    The manager's ipsets live in the manager's kernel, not there, so the policy is written
    into the rules themselves (changing it redefines the filter; libvirt re-instantiates it on
    the running VM). The same order as :func:`build_filter_xml`: never link-local and
    ``never``; DNS to the bridge when ``outboundInternet``; the bridge only when ``allowIps``
    names it exactly; other guests never; ``allowIps`` (IPv4: the layer-2 rules pass no other)
    when ``outboundInternet``, where ``hosts`` (CIDRs: the managers' and that host's own
    addresses that are known, the host's ``hostAddresses`` included) are reachable only at an
    address ``allowIps`` names exactly (a /32), never through a wider range;
    everything else dropped. The manager's SSH comes in routed from outside the guest subnet
    (its address there is not known to the filter), so port 22 is open from any address
    outside the guest subnet.
    """
    network = ipaddress.IPv4Network(guest_network)
    subnet = {"srcipaddr": str(network.network_address), "srcipmask": str(network.prefixlen)}
    root = _filter_root(name, uuid)
    _comment(root, "the manager's SSH connection, routed from outside the guest subnet")
    _rule(root, "drop", "in", PRIO_MANAGER - 10, "tcp", dstportstart="22", **subnet)
    _rule(root, "accept", "in", PRIO_MANAGER, "tcp", dstportstart="22", state="NEW,ESTABLISHED")
    _rule(root, "accept", "out", PRIO_MANAGER, "tcp", srcportstart="22", state="ESTABLISHED")
    _comment(root, "never, whatever the policy: link-local (cloud metadata) and the operator's "
                   "EGRESS_NEVER_CIDRS")
    for cidr in ("169.254.0.0/16", *(entry for entry in never if ":" not in entry)):
        _ip_rule(root, "drop", PRIO_NEVER, cidr)
    allowed = [ipaddress.ip_network(entry, strict=False) for entry in allow_ips]
    allowed = [entry for entry in allowed if entry.version == 4] if outbound_internet else []
    if outbound_internet:
        _comment(root, "DNS to the resolver on the host bridge (outboundInternet)")
        for protocol in ("udp", "tcp"):
            _allow(root, PRIO_DNS, protocol, dstipaddr="$GATEWAY", dstportstart="53")
    if any(entry.prefixlen == 32 and entry.network_address == next(network.hosts())
           for entry in allowed):
        _comment(root, "the host bridge: allowIps names it exactly")
        _allow(root, PRIO_GATEWAY_PINNED, "all", dstipaddr="$GATEWAY")
    _block_guests(root, network)
    pinned = [entry for entry in allowed if entry.prefixlen == 32]
    if pinned:
        _comment(root, "addresses allowIps names exactly (/32), the hosts' own included")
    for entry in pinned:
        _ip_rule(root, "accept", PRIO_PINNED, str(entry), state=NEW_OR_REPLY)
    if hosts:
        _comment(root, "the managers' and the host's own addresses: never through a wider "
                       "range")
    for address in hosts:
        _ip_rule(root, "drop", PRIO_BLOCK_HOST, address)
    if len(allowed) > len(pinned):
        _comment(root, "allowIps (outboundInternet)")
    for entry in allowed:
        if entry.prefixlen < 32:
            _ip_rule(root, "accept", PRIO_ALLOW, str(entry), state=NEW_OR_REPLY)
    return _finish(root)


def build_sealed_filter_xml(name: str, uuid: str) -> str:
    """A filter that drops every frame both ways: the NIC of a memory snapshot's guest being
    made on a remote host (issue 17), which has no address and never needs the network (its
    eth0 stays down; it is reached through the guest agent only)."""
    root = ET.Element("filter", {"name": name, "chain": "root"})
    ET.SubElement(root, "uuid").text = uuid
    _comment(root, "a memory snapshot's guest: no frame in or out")
    _rule(root, "drop", "inout", PRIO_DROP_ALL, "mac")
    return _serialise(root)
