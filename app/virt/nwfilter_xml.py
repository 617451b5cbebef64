"""Per-VM nwfilter XML (pure: no I/O, no libvirt).

The filter is named after the VM's domain (``rds-<short id>``) and referenced from its NIC with
the parameters ``IP`` (the guest's address, for clean-traffic) and ``GATEWAY`` (the host bridge).
Egress is denied by default; see the rule comments for what is let through and why.
"""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

# Rule priorities: lower runs first. Blocks that must win over allow-lists come first.
PRIO_MANAGER = 100
PRIO_DNS = 150  # before the gateway block: DNS is allowed whenever outboundInternet is
PRIO_BLOCK_GUESTS = 200
PRIO_ALLOW = 400
PRIO_ESTABLISHED = 500
PRIO_DROP_ALL = 1000


def build_filter_xml(name: str, uuid: str, allow_ips: tuple[str, ...], outbound_internet: bool,
                     guest_network: str, gateway_ip: str) -> str:
    """Filter XML for one VM.

    :param allow_ips: normalised CIDRs; only IPv4 ones produce rules (the guest network is
        IPv4-only and clean-traffic drops every non-IPv4/ARP frame).
    :param guest_network: the guests' CIDR; never reachable from a guest, whatever the policy.
    """
    root = ET.Element("filter", {"name": name, "chain": "root"})
    ET.SubElement(root, "uuid").text = uuid
    root.append(ET.Comment(" anti-spoofing: MAC, IP and ARP must be the VM's own "))
    ET.SubElement(root, "filterref", {"filter": "clean-traffic"})

    root.append(ET.Comment(" the manager's SSH control connection from the host bridge "))
    _rule(root, "accept", "in", PRIO_MANAGER, "tcp", srcipaddr="$GATEWAY", dstportstart="22",
          state="NEW,ESTABLISHED")
    _rule(root, "accept", "out", PRIO_MANAGER, "tcp", dstipaddr="$GATEWAY", srcportstart="22",
          state="ESTABLISHED")

    network = ipaddress.IPv4Network(guest_network)
    root.append(ET.Comment(" other guests: never, even with 0.0.0.0/0 allowed "))
    gateway_allowed = outbound_internet and any(
        _covers(cidr, gateway_ip) for cidr in allow_ips)
    if not gateway_allowed:
        _rule(root, "drop", "out", PRIO_BLOCK_GUESTS, "all", dstipaddr="$GATEWAY")
    for block in _guest_blocks(network, gateway_ip):
        _rule(root, "drop", "out", PRIO_BLOCK_GUESTS, "all", dstipaddr=str(block.network_address),
              dstipmask=str(block.prefixlen))

    if outbound_internet:
        root.append(ET.Comment(" DNS to the resolver on the host bridge "))
        for proto in ("udp", "tcp"):
            _rule(root, "accept", "out", PRIO_DNS, proto, dstipaddr="$GATEWAY",
                  dstportstart="53", state="NEW,ESTABLISHED")
        for cidr in allow_ips:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != 4:
                continue
            root.append(ET.Comment(f" allowIps entry {cidr} "))
            _rule(root, "accept", "out", PRIO_ALLOW, "all", dstipaddr=str(net.network_address),
                  dstipmask=str(net.prefixlen), state="NEW,ESTABLISHED,RELATED")
        root.append(ET.Comment(" replies to connections the guest was allowed to open "))
        _rule(root, "accept", "in", PRIO_ESTABLISHED, "all", state="ESTABLISHED,RELATED")
    root.append(ET.Comment(" everything else, both ways "))
    _rule(root, "drop", "inout", PRIO_DROP_ALL, "all")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _rule(root: ET.Element, action: str, direction: str, priority: int, protocol: str,
          **attrs: str) -> None:
    rule = ET.SubElement(root, "rule", {"action": action, "direction": direction,
                                        "priority": str(priority)})
    ET.SubElement(rule, protocol, attrs)


def _covers(cidr: str, address: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    ip = ipaddress.ip_address(address)
    return net.version == ip.version and ip in net


def _guest_blocks(network: ipaddress.IPv4Network,
                  gateway_ip: str) -> list[ipaddress.IPv4Network]:
    """The guest network minus the gateway, as CIDR blocks."""
    gateway = ipaddress.IPv4Network(f"{gateway_ip}/32")
    return sorted(network.address_exclude(gateway)) if gateway.subnet_of(network) else [network]
