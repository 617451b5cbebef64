"""Guest addresses and names on a remote host held by DHCP host entries of its network (issue
17, app.services.remote_addresses): safe with several managers at once because libvirt refuses
a second entry with the same address or name. Against libvirt's test driver (what it refuses,
a create retrying after another manager took its address) and through the API over the fakes
(entries made, removed on delete and on a failure half-way, a stale one reclaimed after the
grace period only)."""
from __future__ import annotations

import ipaddress
import json
import types
import uuid

import pytest

from app import create_app
from app.config.hosts import RemoteHost
from app.errors import HostBusy, HypervisorError
from app.services import remote_addresses
from app.services.remote_addresses import RemoteAddresses
from app.virt.network_xml import (DhcpHost, build_dhcp_host_xml, build_network_xml,
                                  parse_dhcp_hosts)
from tests.unit.fakes import API_KEY, World, record
from tests.unit.test_remote_vms import H2, ON_H2

AUTH = {"X-API-Key": API_KEY}
HOST = RemoteHost(name="h2", uri="qemu+tcp://10.210.0.2/system", guest_cidr="172.16.1.0/24")


def entry(last: int, name: str) -> DhcpHost:
    return DhcpHost(mac=f"52:54:00:10:01:{last:02x}", name=name, ip=f"172.16.1.{last}")


def test_an_entry_is_built_and_read_back():
    xml = build_network_xml("rds-net-h2", "rds-br-h2", "172.16.1.0/24", "route")
    assert parse_dhcp_hosts(xml) == []
    assert build_dhcp_host_xml(entry(2, "rds-1")) == \
        '<host mac="52:54:00:10:01:02" name="rds-1" ip="172.16.1.2" />'
    with_hosts = xml.replace(
        '<ip address="172.16.1.1" netmask="255.255.255.0" />',
        '<ip address="172.16.1.1" netmask="255.255.255.0"><dhcp>'
        f'{build_dhcp_host_xml(entry(2, "rds-1"))}{build_dhcp_host_xml(entry(3, "rds-2"))}'
        '</dhcp></ip>')
    assert parse_dhcp_hosts(with_hosts) == [entry(2, "rds-1"), entry(3, "rds-2")]


@pytest.fixture
def test_driver(tmp_path):
    pytest.importorskip("libvirt", reason="libvirt-python is not installed here")
    from app.virt.connection import Hypervisor
    from tests.unit.test_libvirt_adapter import NODE
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    hypervisor = Hypervisor(f"test://{node}", timeout=5)
    hypervisor.ensure_network(HOST.network_name, build_network_xml(
        HOST.network_name, HOST.bridge, HOST.guest_cidr, "route"), lambda: True, lambda: None)
    yield hypervisor
    hypervisor.close()


def test_libvirt_refuses_an_entry_whose_address_name_or_mac_is_held(test_driver):
    network = HOST.network_name
    assert test_driver.add_dhcp_host(network, entry(2, "rds-1")) is True
    assert test_driver.add_dhcp_host(network, DhcpHost("52:54:00:aa:aa:aa", "rds-2",
                                                       "172.16.1.2")) is False  # address
    assert test_driver.add_dhcp_host(network, entry(3, "rds-1")) is False  # name
    assert test_driver.dhcp_hosts(network) == [entry(2, "rds-1")]
    test_driver.delete_dhcp_host(network, entry(2, "rds-1"))
    test_driver.delete_dhcp_host(network, entry(2, "rds-1"))  # none: fine
    test_driver.delete_dhcp_host("rds-net-gone", entry(2, "rds-1"))  # no network: fine
    assert test_driver.dhcp_hosts(network) == []
    with pytest.raises(HypervisorError):  # anything else is an error
        test_driver.add_dhcp_host("rds-net-gone", entry(2, "rds-1"))


class AnotherManagerFirst:
    """The test driver's Hypervisor, where another manager adds its entry for the same
    address just before each of the first ``times`` adds of this one (the race)."""

    def __init__(self, hypervisor, times: int) -> None:
        self.hypervisor, self.times, self.theirs = hypervisor, times, []

    def __getattr__(self, name):
        return getattr(self.hypervisor, name)

    def add_dhcp_host(self, network, host):
        if self.times:
            self.times -= 1
            theirs = DhcpHost(f"52:54:00:ff:00:{len(self.theirs):02x}",
                              f"rds-other{len(self.theirs)}", host.ip)
            assert self.hypervisor.add_dhcp_host(network, theirs)
            self.theirs.append(theirs)
        return self.hypervisor.add_dhcp_host(network, host)


def test_a_refused_reservation_is_retried_with_the_next_address_and_a_new_name(test_driver):
    raced = AnotherManagerFirst(test_driver, times=2)
    held = RemoteAddresses().reserve(HOST, raced, taken=["172.16.1.2"], domains=set())
    assert [other.ip for other in raced.theirs] == ["172.16.1.3", "172.16.1.4"]
    assert held.address == ipaddress.IPv4Address("172.16.1.5")
    assert held.entry == DhcpHost("52:54:00:10:01:05", held.name, "172.16.1.5")
    assert held.name == f"rds-{held.vm_id[:8]}"
    assert test_driver.dhcp_hosts(HOST.network_name) == [*raced.theirs, held.entry]


def test_reserving_gives_up_when_every_attempt_is_taken_first(test_driver, monkeypatch):
    monkeypatch.setattr(remote_addresses, "ATTEMPTS", 3)
    with pytest.raises(HostBusy, match="no guest address could be reserved in 3 attempts"):
        RemoteAddresses().reserve(HOST, AnotherManagerFirst(test_driver, times=3), [], set())


# Through the API, over the fakes ###########################################################

@pytest.fixture
def world(tmp_path, monkeypatch, clock):
    # No memory snapshot on h2 (its VMs boot): the calls below are a boot's.
    world = World(tmp_path, monkeypatch, clock, HOSTS=json.dumps([H2]),
                  HOST_PROBE_TIMEOUT_S=0.5, SNAPSHOT_SHAPES="")
    world.services.shipper.ship("h2", "default")
    yield world
    world.services.close()


@pytest.fixture
def client(world):
    return create_app({"TESTING": True}, services=world.services).test_client()


def create(client):
    return client.post("/v1/vms", json=ON_H2, headers=AUTH)


def entries(world):
    return world.fakes.remotes["h2"].dhcp.get("rds-net-h2", [])


def test_a_vm_holds_its_address_and_name_in_the_hosts_network_until_deleted(client, world):
    vm = create(client).get_json()
    assert entries(world) == [DhcpHost("52:54:00:10:01:02", vm["name"], "172.16.1.2")]
    h2 = world.fakes.remotes["h2"]
    assert h2.calls.index("add_dhcp_host") < h2.calls.index("define filter")  # name held first
    assert client.delete(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 204
    assert entries(world) == []
    assert h2.calls[-1] == "delete_dhcp_host"  # after the domain is undefined


def test_a_create_after_another_managers_reservation_takes_the_next_address(client, world):
    h2 = world.fakes.remotes["h2"]
    theirs = entry(2, "rds-0therman")
    h2.before_add_dhcp_host.append(lambda: h2.dhcp.setdefault("rds-net-h2", []).append(theirs))
    vm = create(client).get_json()
    assert vm["guestIp"] == "172.16.1.3"
    assert entries(world) == [theirs, DhcpHost("52:54:00:10:01:03", vm["name"], "172.16.1.3")]
    assert h2.calls.count("add_dhcp_host") == 2


def test_a_failure_half_way_removes_the_reservation(client, world):
    h2 = world.fakes.remotes["h2"]
    h2.fail["start"] = HypervisorError("libvirt: cannot start")
    assert create(client).status_code == 503
    assert entries(world) == [] and h2.domains == {}


def test_a_stale_reservation_is_reclaimed_after_the_grace_period_only(client, world,
                                                                     monkeypatch):
    now = [1000.0]
    world.parts.remote.addresses.clock = lambda: now[0]
    h2 = world.fakes.remotes["h2"]
    stale = entry(2, "rds-5ta1e000")  # its manager died before defining its domain
    h2.dhcp["rds-net-h2"] = [stale]
    first = create(client).get_json()
    assert first["guestIp"] == "172.16.1.3"  # seen now: maybe a create in progress
    now[0] += remote_addresses.RESERVATION_GRACE_S - 1
    assert stale in entries(world)
    now[0] += 1
    second = create(client).get_json()
    assert second["guestIp"] == "172.16.1.2"  # reclaimed, then reserved
    assert [e.name for e in entries(world)] == [first["name"], second["name"]]


def test_a_reservation_whose_domain_exists_is_never_reclaimed(client, world):
    now = [1000.0]
    world.parts.remote.addresses.clock = lambda: now[0]
    vm = create(client).get_json()
    now[0] += 10 * remote_addresses.RESERVATION_GRACE_S
    assert create(client).get_json()["guestIp"] == "172.16.1.3"
    assert vm["name"] in [e.name for e in entries(world)]


def test_a_create_whose_reservation_was_reclaimed_meanwhile_fails_and_is_undone(client, world):
    h2 = world.fakes.remotes["h2"]
    real_define = h2.define_domain

    def define_after_a_reclaim(xml):  # the create took over the grace period
        h2.dhcp["rds-net-h2"] = []
        real_define(xml)
    h2.define_domain = define_after_a_reclaim
    answer = create(client)
    assert answer.status_code == 503 and "was reclaimed meanwhile" in answer.get_json()["message"]
    assert h2.domains == {} and h2.filters == set() and entries(world) == []


def test_a_name_a_domain_has_already_is_not_used(client, world, monkeypatch):
    h2 = world.fakes.remotes["h2"]
    h2.add(record(0xaaaaaaaa, guest_ip="172.16.1.9", host="h2"))  # older, no reservation
    ids = iter(["aaaaaaaa-0000-4000-8000-000000000000", "bbbbbbbb-0000-4000-8000-000000000000"])
    monkeypatch.setattr(remote_addresses, "uuid",
                        types.SimpleNamespace(uuid4=lambda: uuid.UUID(next(ids))))
    vm = create(client).get_json()
    assert vm["name"] == "rds-bbbbbbbb" and vm["guestIp"] == "172.16.1.2"
    assert [e.name for e in entries(world)] == ["rds-bbbbbbbb"]
