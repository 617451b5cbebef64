"""The guests' libvirt network and its DHCP host entries (pure: no I/O, no libvirt)."""
from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class DhcpHost:
    """A DHCP host entry of a network's ``<ip><dhcp>``: on a remote host's network, a guest
    address reservation (its name the VM's, its MAC the one derived from the address)."""

    mac: str
    name: str
    ip: str


def build_dhcp_host_xml(host: DhcpHost) -> str:
    """The ``<host>`` element ``virNetworkUpdate`` (section ``IP_DHCP_HOST``) adds or deletes."""
    return ET.tostring(ET.Element("host", {"mac": host.mac, "name": host.name, "ip": host.ip}),
                       encoding="unicode")


def parse_dhcp_hosts(xml: str) -> list[DhcpHost]:
    """The DHCP host entries of a network's XML (of every ``<ip>``), in order."""
    return [DhcpHost(mac=element.get("mac", ""), name=element.get("name", ""),
                     ip=element.get("ip", ""))
            for element in ET.fromstring(xml).findall("ip/dhcp/host")]
