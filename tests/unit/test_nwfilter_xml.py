"""Per-VM nwfilter XML (goldens + rule checks) and the guests' network XML."""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from app.virt.network_xml import build_network_xml
from app.virt.nwfilter_xml import build_filter_xml

NAME = "rds-0b5c1a3e"
UUID = "0b5c1a3e-2f4d-4c6b-9a8e-1d2c3b4a5f60"
GUESTS = "172.16.0.0/24"
GATEWAY = "172.16.0.1"
CASES = {
    "nwfilter-deny": ((), False),
    "nwfilter-gateway": (("172.16.0.1/32",), True),
    "nwfilter-internet": (("0.0.0.0/0",), True),
    "nwfilter-ipv6": (("2001:db8::/32", "1.1.1.1/32"), True),
}


def build(allow_ips: tuple[str, ...], outbound: bool) -> str:
    return build_filter_xml(NAME, UUID, allow_ips, outbound, GUESTS, GATEWAY)


def rules(xml: str) -> list[tuple[str, str, dict[str, str]]]:
    """(action, direction, attributes of the protocol element) per rule, in order."""
    return [(rule.get("action"), rule.get("direction"), dict(rule[0].attrib))
            for rule in ET.fromstring(xml).iter("rule")]


def accepted_out(xml: str) -> list[dict[str, str]]:
    return [attrs for action, direction, attrs in rules(xml)
            if action == "accept" and direction == "out" and attrs.get("srcportstart") != "22"]


def dropped_out(xml: str) -> list[str]:
    return [f"{attrs['dstipaddr']}/{attrs.get('dstipmask', '32')}"
            for action, direction, attrs in rules(xml)
            if action == "drop" and direction == "out"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(golden, case):
    golden(f"xml/{case}-out.xml", build(*CASES[case]))


@pytest.mark.parametrize("allow_ips", [(), ("8.8.8.8/32", "0.0.0.0/0")])
def test_outbound_false_allows_nothing_and_drops_all(allow_ips):
    xml = build(allow_ips, False)
    root = ET.fromstring(xml)
    assert root.get("name") == NAME and root.findtext("uuid") == UUID
    assert root.find("filterref").get("filter") == "clean-traffic"
    assert accepted_out(xml) == []
    assert rules(xml)[-1] == ("drop", "inout", {})


def test_manager_ssh_is_always_let_through():
    assert ("accept", "in", {"srcipaddr": "$GATEWAY", "dstportstart": "22",
                             "state": "NEW,ESTABLISHED"}) in rules(build((), False))


def test_allowed_gateway_is_not_dropped():
    xml = build(("172.16.0.1/32",), True)
    assert "$GATEWAY/32" not in dropped_out(xml)
    assert {"dstipaddr": "172.16.0.1", "dstipmask": "32",
            "state": "NEW,ESTABLISHED,RELATED"} in accepted_out(xml)


def test_gateway_dropped_unless_allowed():
    assert "$GATEWAY/32" in dropped_out(build(("8.8.8.8/32",), True))


def test_full_internet_still_drops_every_other_guest():
    xml = build(("0.0.0.0/0",), True)
    blocks = [ipaddress.ip_network(d) for d in dropped_out(xml) if not d.startswith("$")]
    guests = [ip for ip in ipaddress.ip_network(GUESTS) if str(ip) != GATEWAY]
    assert all(any(ip in block for block in blocks) for ip in guests)
    assert not any(ipaddress.ip_address(GATEWAY) in block for block in blocks)
    assert {"dstipaddr": "0.0.0.0", "dstipmask": "0",
            "state": "NEW,ESTABLISHED,RELATED"} in accepted_out(xml)


def test_guest_blocks_outrank_allow_rules():
    root = ET.fromstring(build(("0.0.0.0/0",), True))
    drops = [int(r.get("priority")) for r in root.iter("rule")
             if r.get("action") == "drop" and r.get("direction") == "out"]
    allows = [int(r.get("priority")) for r in root.iter("rule")
              if r.get("action") == "accept" and r[0].get("dstipaddr") == "0.0.0.0"]
    assert max(drops) < min(allows)


def test_outbound_true_allows_dns_to_the_gateway():
    dns = [attrs for attrs in accepted_out(build((), True)) if attrs.get("dstportstart") == "53"]
    assert len(dns) == 2 and all(attrs["dstipaddr"] == "$GATEWAY" for attrs in dns)


def test_ipv6_entries_produce_no_rule():
    ipv4_only = build(("1.1.1.1/32",), True)
    with_ipv6 = build(("2001:db8::/32", "1.1.1.1/32"), True)
    assert rules(with_ipv6) == rules(ipv4_only)
    assert "2001:db8" not in "".join(str(attrs) for _a, _d, attrs in rules(with_ipv6))


def test_isolated_network_has_no_forward():
    root = ET.fromstring(build_network_xml("rds-net", "rds-br0", GUESTS, "isolated"))
    assert root.find("forward") is None
    assert root.findtext("name") == "rds-net"
    assert root.find("bridge").get("name") == "rds-br0"
    assert root.find("ip").attrib == {"address": GATEWAY, "netmask": "255.255.255.0"}


def test_nat_network_forwards_with_nat():
    root = ET.fromstring(build_network_xml("rds-net", "rds-br0", "10.9.0.0/16", "nat"))
    assert root.find("forward").get("mode") == "nat"
    assert root.find("ip").attrib == {"address": "10.9.0.1", "netmask": "255.255.0.0"}


def test_unknown_network_mode_is_refused():
    with pytest.raises(ValueError, match="bridge"):
        build_network_xml("rds-net", "rds-br0", GUESTS, "bridge")


def test_dns_is_accepted_before_the_gateway_block():
    """Allowed DNS must win over the gateway drop even when no allowIps entry covers it."""
    import xml.etree.ElementTree as ET

    from app.virt.nwfilter_xml import build_filter_xml

    root = ET.fromstring(build_filter_xml("rds-x", "00000000-0000-4000-8000-000000000001",
                                          ("10.9.0.0/16",), True, "172.16.0.0/24",
                                          "172.16.0.1"))
    dns = [int(r.get("priority")) for r in root.iter("rule")
           if r.find("udp") is not None and r.find("udp").get("dstportstart") == "53"]
    gateway_drop = [int(r.get("priority")) for r in root.iter("rule")
                    if r.get("action") == "drop" and r.find("all") is not None
                    and r.find("all").get("dstipaddr") == "$GATEWAY"]
    assert dns and gateway_drop and max(dns) < min(gateway_drop)
