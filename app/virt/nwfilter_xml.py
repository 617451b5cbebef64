"""Per-VM nwfilter XML (pure: no I/O, no libvirt).

The filter is named after the VM's domain (``rds-<short id>``) and referenced from its NIC with
the parameters ``IP`` (the guest's address, for clean-traffic) and ``GATEWAY`` (the host bridge).
Egress is denied by default; see the rule comments for what is let through and why.

The rules do not depend on the VM's policy: what a guest may reach is the content of its two
ipsets (:mod:`app.virt.egress`), which change in milliseconds without touching the filter.
"""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

from app.virt.egress import allow_set, dns_set

# Rule priorities: lower runs first. Blocks that must win over allow-lists come first.
PRIO_MANAGER = 100
PRIO_DNS = 150  # before the gateway block: DNS is allowed whenever outboundInternet is
PRIO_GATEWAY_ALLOWED = 190  # the bridge itself, when an allowIps entry covers it
PRIO_BLOCK_GUESTS = 200
PRIO_ALLOW = 400
PRIO_ESTABLISHED = 500
PRIO_DROP_ALL = 1000
NEW_OR_REPLY = "NEW,ESTABLISHED,RELATED"


def build_filter_xml(name: str, uuid: str, guest_network: str, gateway_ip: str) -> str:
    """Filter XML for one VM.

    :param guest_network: the guests' CIDR; never reachable from a guest, whatever the policy.
    """
    allowed, resolver = allow_set(name), dns_set(name)
    root = ET.Element("filter", {"name": name, "chain": "root"})
    ET.SubElement(root, "uuid").text = uuid
    root.append(ET.Comment(" anti-spoofing: MAC, IP and ARP must be the VM's own "))
    ET.SubElement(root, "filterref", {"filter": "clean-traffic"})

    root.append(ET.Comment(" the manager's SSH control connection from the host bridge "))
    _rule(root, "accept", "out", PRIO_MANAGER, "tcp", dstipaddr="$GATEWAY", srcportstart="22",
          state="ESTABLISHED")
    _rule(root, "accept", "in", PRIO_MANAGER, "tcp", srcipaddr="$GATEWAY", dstportstart="22",
          state="NEW,ESTABLISHED")

    root.append(ET.Comment(f" DNS to the resolver on the host bridge: address and port in "
                           f"{resolver} (outboundInternet) "))
    _rule(root, "accept", "out", PRIO_DNS, "all", ipset=resolver, ipsetflags="dst,dst",
          state=NEW_OR_REPLY)
    root.append(ET.Comment(f" the host bridge only if an entry of {allowed} covers it "))
    _rule(root, "accept", "out", PRIO_GATEWAY_ALLOWED, "all", dstipaddr="$GATEWAY",
          ipset=allowed, ipsetflags="dst", state=NEW_OR_REPLY)

    network = ipaddress.IPv4Network(guest_network)
    root.append(ET.Comment(" other guests: never, even with 0.0.0.0/0 allowed "))
    _rule(root, "drop", "out", PRIO_BLOCK_GUESTS, "all", dstipaddr="$GATEWAY")
    for block in _guest_blocks(network, gateway_ip):
        _rule(root, "drop", "out", PRIO_BLOCK_GUESTS, "all", dstipaddr=str(block.network_address),
              dstipmask=str(block.prefixlen))

    root.append(ET.Comment(f" allowIps: destinations in {allowed} (empty without "
                           f"outboundInternet) "))
    _rule(root, "accept", "out", PRIO_ALLOW, "all", ipset=allowed, ipsetflags="dst",
          state=NEW_OR_REPLY)
    root.append(ET.Comment(" replies to connections the guest was allowed to open "))
    _rule(root, "accept", "in", PRIO_ESTABLISHED, "all", state="ESTABLISHED,RELATED")
    root.append(ET.Comment(" everything else, both ways "))
    _rule(root, "drop", "inout", PRIO_DROP_ALL, "all")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def build_sealed_filter_xml(name: str, uuid: str) -> str:
    """Filter XML that lets nothing in or out, for a memory-snapshot seed while it boots and is
    saved (it has no address and is only reached through the guest agent)."""
    root = ET.Element("filter", {"name": name, "chain": "root"})
    ET.SubElement(root, "uuid").text = uuid
    root.append(ET.Comment(" sealed: no traffic at all, both ways "))
    _rule(root, "drop", "inout", PRIO_DROP_ALL, "all")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _rule(root: ET.Element, action: str, direction: str, priority: int, protocol: str,
          **attrs: str) -> None:
    rule = ET.SubElement(root, "rule", {"action": action, "direction": direction,
                                        "priority": str(priority)})
    ET.SubElement(rule, protocol, attrs)


def _guest_blocks(network: ipaddress.IPv4Network,
                  gateway_ip: str) -> list[ipaddress.IPv4Network]:
    """The guest network minus the gateway, as CIDR blocks."""
    gateway = ipaddress.IPv4Network(f"{gateway_ip}/32")
    return sorted(network.address_exclude(gateway)) if gateway.subnet_of(network) else [network]
