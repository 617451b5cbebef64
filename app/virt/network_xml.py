"""The guests' libvirt network (pure: no I/O, no libvirt)."""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET


def build_network_xml(name: str, bridge: str, cidr: str, mode: str) -> str:
    """Network XML.

    :param mode: ``isolated`` (no ``<forward>``: no guest packet leaves the machine; tests and
        CI), ``nat`` (production hosts whose guests may reach the internet when allowed) or
        ``route`` (a remote host's, issue 17: the subnet is routed to and from the managers,
        without NAT; each VM's filter says what its guest may reach).
    """
    network = ipaddress.IPv4Network(cidr)
    gateway = next(network.hosts())
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "title").text = f"run-dat-sheesh guests ({mode})"
    if mode in ("nat", "route"):
        ET.SubElement(root, "forward", {"mode": mode})
    elif mode != "isolated":
        raise ValueError(f"unknown network mode {mode!r}")
    ET.SubElement(root, "bridge", {"name": bridge, "stp": "off", "delay": "0"})
    ET.SubElement(root, "ip", {"address": str(gateway), "netmask": str(network.netmask)})
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"
