"""Per-VM nwfilter XML (goldens + rule checks) and the guests' network XML."""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from app.virt.egress import (HOST_SET, NEVER_SET, EgressSets, egress_entries, host_sets_script,
                             never_ranges, owner_of, restore_script)
from app.virt.ipsets import parse_addresses
from app.virt.network_xml import build_network_xml
from app.virt.nwfilter_xml import build_binding_xml, build_filter_xml, build_remote_filter_xml

NAME = "rds-0b5c1a3e"
UUID = "0b5c1a3e-2f4d-4c6b-9a8e-1d2c3b4a5f60"
GUESTS = "172.16.0.0/24"
GATEWAY = "172.16.0.1"


def build() -> str:
    return build_filter_xml(NAME, UUID, GUESTS, GATEWAY)


def rules(xml: str) -> list[tuple[str, str, int, dict[str, str]]]:
    """(action, direction, priority, attributes of the protocol element) per rule, in order."""
    return [(rule.get("action"), rule.get("direction"), int(rule.get("priority")),
             dict(rule[0].attrib)) for rule in ET.fromstring(xml).iter("rule")]


def test_golden(golden):
    golden("xml/nwfilter-vm-out.xml", build())


def test_filter_names_the_vm_and_ends_with_drop_all():
    root = ET.fromstring(build())
    assert root.get("name") == NAME and root.findtext("uuid") == UUID
    assert rules(build())[-1] == ("drop", "inout", 1000, {})


def test_anti_spoofing_comes_first_and_drops_every_other_ethertype():
    """The clean-traffic checks, written out: own MAC, IPv4 source and ARP sender; then only
    IPv4 and ARP pass, both ways."""
    layer2 = [(a, d, attrs) for a, d, prio, attrs in rules(build()) if prio < 0]
    assert layer2[:4] == [("drop", "out", {"match": "no", "srcmacaddr": "$MAC"}),
                          ("drop", "out", {"match": "no", "srcipaddr": "$IP"}),
                          ("drop", "out", {"match": "no", "arpsrcmacaddr": "$MAC"}),
                          ("drop", "out", {"match": "no", "arpsrcipaddr": "$IP"})]
    assert layer2[4:] == [("accept", "inout", {}), ("accept", "inout", {}),
                          ("drop", "inout", {})]
    elements = [rule[0].tag for rule in ET.fromstring(build()).iter("rule")][:7]
    assert elements == ["mac", "ip", "arp", "arp", "ip", "arp", "mac"]


def test_binding_applies_the_vm_filter_to_its_port():
    root = ET.fromstring(build_binding_xml(NAME, "52:54:00:10:00:05", NAME, NAME, UUID,
                                           {"IP": "172.16.0.5", "GATEWAY": GATEWAY}))
    assert root.find("portdev").get("name") == NAME
    assert root.find("mac").get("address") == "52:54:00:10:00:05"
    assert root.findtext("owner/name") == NAME and root.findtext("owner/uuid") == UUID
    assert root.find("filterref").get("filter") == NAME
    assert {p.get("name"): p.get("value") for p in root.iter("parameter")} == {
        "IP": "172.16.0.5", "GATEWAY": GATEWAY}


def test_manager_ssh_is_always_let_through():
    assert ("accept", "in", 100, {"srcipaddr": "$GATEWAY", "dstportstart": "22",
                                  "state": "NEW,ESTABLISHED"}) in rules(build())


def test_every_egress_accept_needs_a_set_member():
    """No outbound connection is accepted unless the VM's sets (its policy) say so."""
    for action, direction, _prio, attrs in rules(build()):
        if action == "accept" and direction == "out" and attrs.get("srcportstart") != "22":
            assert attrs["ipset"] in (f"{NAME}-allow", f"{NAME}-pin", f"{NAME}-dns"), attrs


def test_guest_blocks_outrank_every_set_but_dns():
    table = rules(build())
    guest_blocks = [prio for action, direction, prio, attrs in table
                    if action == "drop" and direction == "out" and "dstipaddr" in attrs]
    accepts = [prio for action, direction, prio, attrs in table
               if action == "accept" and attrs.get("ipset") in (f"{NAME}-allow", f"{NAME}-pin")
               and "dstipaddr" not in attrs]
    assert accepts and max(guest_blocks) < min(accepts)
    dropped = [ipaddress.ip_network(f"{a['dstipaddr']}/{a.get('dstipmask', '32')}")
               for action, _d, _p, a in table if action == "drop" and "dstipaddr" in a
               and not a["dstipaddr"].startswith("$")]
    guests = [ip for ip in ipaddress.ip_network(GUESTS) if str(ip) != GATEWAY]
    assert all(any(ip in block for block in dropped) for ip in guests)


def verdict(destination: str, sets: dict[str, list[str]], port: int = 80) -> str:
    """What the filter does with a guest's new connection to ``destination`` (a model of
    libvirt's evaluation: IP rules of direction out, by priority, first match wins)."""
    address = ipaddress.ip_address(destination)

    def in_set(name: str) -> bool:
        for member in sets.get(name, []):
            if "," in member:
                ip, _sep, proto_port = member.partition(",")
                if ipaddress.ip_address(ip) == address and proto_port.endswith(f":{port}"):
                    return True
            elif address in ipaddress.ip_network(member):
                return True
        return False

    for action, direction, _prio, attrs in sorted(rules(build()), key=lambda rule: rule[2]):
        if direction not in ("out", "inout") or _prio < 0 or "srcportstart" in attrs:
            continue
        if "dstipaddr" in attrs:
            value = GATEWAY if attrs["dstipaddr"] == "$GATEWAY" else attrs["dstipaddr"]
            if address not in ipaddress.ip_network(f"{value}/{attrs.get('dstipmask', '32')}"):
                continue
        if "ipset" in attrs and not in_set(attrs["ipset"]):
            continue
        return action
    return "none"


def policy_sets(allow_ips: tuple[str, ...], outbound: bool = True,
                host: tuple[str, ...] = ("10.0.2.15/32", f"{GATEWAY}/32")) -> dict:
    sets = egress_entries(allow_ips, outbound, GATEWAY)
    return {f"{NAME}-allow": list(sets.allowed), f"{NAME}-pin": list(sets.pinned),
            f"{NAME}-dns": list(sets.resolvers), HOST_SET: list(host),
            NEVER_SET: never_ranges()}


@pytest.mark.parametrize("destination", [GATEWAY, "10.0.2.15", "169.254.169.254"])
def test_full_internet_never_opens_the_host_or_link_local(destination):
    """0.0.0.0/0 contains the bridge, the host's other addresses and the metadata address:
    none of them opens through it."""
    assert verdict(destination, policy_sets(("0.0.0.0/0",))) == "drop"
    assert verdict("8.8.8.8", policy_sets(("0.0.0.0/0",))) == "accept"
    assert verdict("10.0.2.16", policy_sets(("10.0.0.0/8",))) == "accept"
    assert verdict("10.0.2.15", policy_sets(("10.0.0.0/8",))) == "drop"


@pytest.mark.parametrize("destination", [GATEWAY, "10.0.2.15"])
def test_host_addresses_open_only_when_named_as_a_slash_32(destination):
    assert verdict(destination, policy_sets((f"{destination}/32",))) == "accept"
    assert verdict(destination, policy_sets((destination,))) == "accept"
    assert verdict(destination, policy_sets((f"{destination}/32",), outbound=False)) == "drop"


def test_link_local_and_never_ranges_stay_closed_even_when_named():
    assert verdict("169.254.169.254", policy_sets(("169.254.169.254/32",))) == "drop"
    sets = policy_sets(("192.168.1.7/32", "0.0.0.0/0"))
    sets[NEVER_SET] = never_ranges(["192.168.0.0/16"])
    assert verdict("192.168.1.7", sets) == "drop"
    assert verdict("8.8.4.4", sets) == "accept"


def test_other_guests_stay_closed_even_when_named():
    assert verdict("172.16.0.9", policy_sets(("172.16.0.9/32", "0.0.0.0/0"))) == "drop"


def test_dns_to_the_bridge_follows_outbound_internet():
    assert verdict(GATEWAY, policy_sets(("8.8.8.8/32",)), port=53) == "accept"
    assert verdict(GATEWAY, policy_sets(("8.8.8.8/32",), outbound=False), port=53) == "drop"


def test_dns_matches_address_and_port_in_the_dns_set():
    dns = [a for _a, _d, prio, a in rules(build()) if a.get("ipset") == f"{NAME}-dns"]
    assert dns == [{"ipset": f"{NAME}-dns", "ipsetflags": "dst,dst",
                    "state": "NEW,ESTABLISHED,RELATED"}]


@pytest.mark.parametrize("allow_ips", [(), ("8.8.8.8/32", "0.0.0.0/0")])
def test_outbound_false_fills_no_set(allow_ips):
    assert egress_entries(allow_ips, False, GATEWAY) == EgressSets()


def test_outbound_true_allows_dns_and_the_entries():
    sets = egress_entries(("10.0.0.0/8", "1.1.1.1/32"), True, GATEWAY)
    assert sets.allowed == ("10.0.0.0/8", "1.1.1.1/32")
    assert sets.pinned == ("1.1.1.1",)
    assert sets.resolvers == (f"{GATEWAY},udp:53", f"{GATEWAY},tcp:53")


def test_full_internet_is_split_into_halves():
    sets = egress_entries(("0.0.0.0/0",), True, GATEWAY)
    assert sets.allowed == ("0.0.0.0/1", "128.0.0.0/1") and sets.pinned == ()


def test_ipv6_entries_are_dropped_and_duplicates_merged():
    sets = egress_entries(("2001:db8::/32", "1.1.1.1", "1.1.1.1/32"), True, GATEWAY)
    assert sets.allowed == ("1.1.1.1/32",) and sets.pinned == ("1.1.1.1",)


def test_restore_script_swaps_fresh_sets_in():
    script = restore_script(NAME, EgressSets(("10.0.0.0/8",), ("10.0.0.1",),
                                             (f"{GATEWAY},udp:53",))).splitlines()
    assert script[:3] == [f"create {NAME}-allow hash:net family inet -exist",
                          f"create {NAME}-allow-n hash:net family inet -exist",
                          f"flush {NAME}-allow-n"]
    assert f"add {NAME}-allow-n 10.0.0.0/8 -exist" in script
    assert f"add {NAME}-pin-n 10.0.0.1 -exist" in script
    assert script.index(f"swap {NAME}-allow-n {NAME}-allow") > script.index(
        f"add {NAME}-allow-n 10.0.0.0/8 -exist")
    assert f"create {NAME}-pin hash:ip family inet -exist" in script
    assert f"create {NAME}-dns hash:ip,port family inet -exist" in script
    assert script[-1] == f"destroy {NAME}-dns-n"


def test_host_sets_hold_the_host_addresses_and_the_never_ranges():
    script = host_sets_script(["10.0.2.15/32"], never_ranges()).splitlines()
    assert f"add {HOST_SET}-n 10.0.2.15/32 -exist" in script
    assert f"add {NEVER_SET}-n 169.254.0.0/16 -exist" in script


def test_host_addresses_are_parsed_from_ip_addr():
    output = ("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
              "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\  x\n"
              "5: rds-br0    inet 172.16.0.1/24 brd 172.16.0.255 scope global rds-br0\n")
    assert parse_addresses(output) == ["127.0.0.1/32", "10.0.2.15/32", "172.16.0.1/32"]


def test_set_owners_are_found_for_every_suffix():
    names = [f"{NAME}-allow", f"{NAME}-pin-n", f"{NAME}-dns", HOST_SET, NEVER_SET, "other"]
    assert {owner_of(name) for name in names} - {None} == {NAME}


def test_set_names_fit_the_kernel_limit():
    with pytest.raises(ValueError):
        restore_script("rds-" + "x" * 30, EgressSets())


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
    table = rules(build())
    dns = [prio for _a, _d, prio, attrs in table if attrs.get("ipset") == f"{NAME}-dns"]
    gateway_drop = [prio for action, _d, prio, attrs in table
                    if action == "drop" and attrs.get("dstipaddr") == "$GATEWAY"]
    assert dns and gateway_drop and max(dns) < min(gateway_drop)


def test_binding_golden(golden):
    golden("xml/nwfilter-binding-out.xml", build_binding_xml(
        "vnet7", "52:54:00:10:00:05", NAME, NAME, UUID, {"IP": "172.16.0.5", "GATEWAY": GATEWAY}))


@pytest.mark.parametrize("case, allow_ips, outbound, never, hosts", [
    # outboundInternet off: no DNS, no allowIps rules, whatever allowIps says
    ("closed", ("10.0.0.0/8", "172.16.1.1/32"), False, (), ()),
    # every rule shape: the bridge pinned, a /32, wider ranges, IPv6 ignored, never-ranges
    # (IPv6 ones ignored) and the hosts' own addresses
    ("open", ("172.16.1.1/32", "203.0.113.7/32", "198.51.100.0/24", "0.0.0.0/1", "2001:db8::/32"),
     True, ("192.0.2.0/24", "fd00::/8"), ("198.51.100.9", "203.0.113.1")),
    # a host's listed networks (hostAddresses) among its addresses: 0.0.0.0/0 and a range
    # inside one of them reach none of it, an address of it named exactly does
    ("hostnets", ("0.0.0.0/0", "192.0.2.9/32", "192.0.2.128/25"), True, (),
     ("10.210.0.2/32", "192.0.2.0/24", "198.51.100.0/28")),
])
def test_remote_golden(golden, case, allow_ips, outbound, never, hosts):
    golden(f"xml/nwfilter-remote-{case}-out.xml", build_remote_filter_xml(
        NAME, UUID, "172.16.1.0/24", allow_ips, outbound, never=never, hosts=hosts))


def test_a_hosts_listed_network_is_dropped_before_any_wider_allow_but_after_exact_pins():
    found = rules(build_remote_filter_xml(
        NAME, UUID, "172.16.1.0/24", ("0.0.0.0/0", "192.0.2.9/32", "192.0.2.128/25"), True,
        hosts=("10.210.0.2/32", "192.0.2.0/24")))
    ordered = [(action, prio, attrs.get("dstipaddr"), attrs.get("dstipmask"))
               for action, direction, prio, attrs in found
               if direction == "out" and prio >= 300 and "dstipmask" in attrs]
    assert ordered == [("accept", 300, "192.0.2.9", "32"),
                       ("drop", 350, "10.210.0.2", "32"), ("drop", 350, "192.0.2.0", "24"),
                       ("accept", 400, "0.0.0.0", "0"), ("accept", 400, "192.0.2.128", "25")]
