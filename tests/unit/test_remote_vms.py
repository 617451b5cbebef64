"""VMs on a remote host (HOSTS, issue 17) over fakes: made through that host's libvirt only
(volumes, filter, network, domain), found and used there, deleted leaving nothing; an unknown
host is 400, a host DOWN 503, an image not shipped there 409; a failure half-way leaves nothing;
the local host's VMs are unaffected."""
from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from app import create_app
from app.errors import HypervisorError
from app.virt.metadata_xml import parse_metadata
from app.virt.network_xml import DhcpHost
from app.virt.nwfilter_xml import build_remote_filter_xml
from tests.unit import remote_hosts
from tests.unit.fakes import API_KEY, World

H2 = {**remote_hosts.H2, "maxVms": 2}
AUTH = {"X-API-Key": API_KEY}
ON_H2 = {"cpu": 1, "memMb": 256, "placement": {"host": "h2"}}


@pytest.fixture
def world_settings():
    # No memory snapshot on h2: its VMs boot (restores: tests/unit/test_remote_seeds.py).
    return {**remote_hosts.hosts_settings(H2), "STOP_TIMEOUT_S": "0.5", "SNAPSHOT_SHAPES": ""}


@pytest.fixture
def h2(world):
    world.services.shipper.ship("h2", "default")
    return world.fakes.remotes["h2"]


def create(client, body=ON_H2):
    return client.post("/v1/vms", json=body, headers=AUTH)


def test_a_vm_is_made_on_the_named_host_through_its_libvirt_only(client, world, h2):
    answer = create(client, {**ON_H2, "allowIps": ["10.9.0.0/16"], "outboundInternet": True})
    assert answer.status_code == 201, answer.text
    vm = answer.get_json()
    assert vm["host"] == "h2" and vm["state"] == "RUNNING" and vm["provisionMode"] == "boot"
    assert vm["guestIp"] == "172.16.1.2"  # the host's guestCidr; .1 is its bridge
    name = vm["name"]
    # Nothing of it here: no local domain, directory, tap, ipsets or filter.
    assert world.hypervisor.domains == {} and not world.taps.names()
    assert not (world.settings.vms_dir / name).exists() and not world.ipsets.vm_names()
    assert world.hypervisor.filters == set()
    # There: its volumes, filter, the routed network and the domain, which records the host.
    assert {("rds-vms", f"{name}.{suffix}") for suffix in
            ("qcow2", "ssh_host_ed25519_key", "authorized_keys")} <= set(h2.volumes)
    assert h2.filters == {name}
    network = ET.fromstring(h2.networks["rds-net-h2"])
    assert network.find("forward").get("mode") == "route"
    assert network.find("bridge").get("name") == "rds-br-h2"
    domain = ET.fromstring(h2.defined[-1])
    assert parse_metadata(h2.defined[-1]).host == "h2"
    nic = domain.find("devices/interface")
    assert nic.get("type") == "network" and nic.find("source").get("network") == "rds-net-h2"
    assert nic.find("filterref").get("filter") == name
    params = {p.get("name"): p.get("value") for p in nic.findall("filterref/parameter")}
    assert params == {"IP": "172.16.1.2", "GATEWAY": "172.16.1.1"}
    assert domain.find("devices/disk/source").get("file") == \
        f"/var/lib/libvirt/images/rds-vms/{name}.qcow2"
    assert domain.findtext("os/kernel") == "/var/lib/libvirt/images/rds-images/default.vmlinuz"
    assert "rds.ip=172.16.1.2/24 rds.gw=172.16.1.1" in domain.findtext("os/cmdline")
    entries = {e.get("name"): e.get("file") for e in domain.findall("sysinfo/entry")}
    assert entries["opt/org.rundatsheesh/ssh_host_ed25519_key"] == \
        f"/var/lib/libvirt/images/rds-vms/{name}.ssh_host_ed25519_key"
    assert all(source.get("path") is None  # libvirt picks the channel's path there
               for source in domain.findall("devices/channel/source"))
    overlay = ET.fromstring(h2.volumes[("rds-vms", f"{name}.qcow2")])
    assert overlay.findtext("backingStore/path") == \
        "/var/lib/libvirt/images/rds-images/default.qcow2"
    # The guest is reached at its address on that host's subnet.
    assert "172.16.1.2" in world.fakes.guests.by_host


def test_a_remote_vm_is_found_used_and_deleted_leaving_nothing_there(client, world, h2):
    local = create(client, {"cpu": 1, "memMb": 256}).get_json()
    vm = create(client).get_json()
    assert client.get(f"/v1/vms/{vm['id']}", headers=AUTH).get_json()["host"] == "h2"
    listed = client.get("/v1/vms", headers=AUTH).get_json()
    assert [(v["id"], v["host"]) for v in listed] == [(local["id"], "local"), (vm["id"], "h2")]
    answer = client.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "id -u"}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    changed = client.put(f"/v1/vms/{vm['id']}/network", headers=AUTH,
                         json={"allowIps": ["10.210.0.1/32"], "outboundInternet": True})
    assert changed.status_code == 200 and changed.get_json()["allowIps"] == ["10.210.0.1/32"]
    assert client.delete(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 204
    assert h2.domains == {} and h2.filters == set()
    assert [name for pool, name in h2.volumes if pool == "rds-vms"] == []
    assert client.get(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/vms/{local['id']}", headers=AUTH).get_json()["host"] == "local"


def test_a_remote_vms_labels_are_kept_there_and_filter_the_list(client, world, h2):
    local = create(client, {"cpu": 1, "memMb": 256, "labels": {"team": "a"}}).get_json()
    vm = create(client).get_json()
    answer = client.patch(f"/v1/vms/{vm['id']}", headers=AUTH,
                          json={"labels": {"team": "a", "ci.job": "42"}})
    assert answer.status_code == 200, answer.text
    assert answer.get_json()["labels"] == {"team": "a", "ci.job": "42"}
    assert answer.get_json()["host"] == "h2" and answer.get_json()["state"] == "RUNNING"
    # Kept in the domain's record there, nothing made here.
    assert parse_metadata(h2.domains[vm["id"]].xml).labels == {"team": "a", "ci.job": "42"}
    assert world.hypervisor.domains.keys() == {local["id"]}
    assert client.get(f"/v1/vms/{vm['id']}", headers=AUTH).get_json()["labels"] == \
        {"team": "a", "ci.job": "42"}

    def listed(query):
        return [v["id"] for v in client.get(f"/v1/vms?{query}", headers=AUTH).get_json()]
    assert listed("label=team=a") == [local["id"], vm["id"]]
    assert listed("label=ci.job=42") == [vm["id"]]
    assert listed("label=ci.job") == [vm["id"]]
    assert listed("label=ci.job=43") == []
    answer = client.delete("/v1/vms?label=ci.job=42", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json()["deleted"] == [vm["id"]]
    assert h2.domains == {}
    assert client.patch(f"/v1/vms/{vm['id']}", headers=AUTH,
                        json={"labels": {}}).status_code == 404


def test_a_remote_vm_stops_and_starts_with_the_local_states(client, world, h2):
    vm = create(client).get_json()
    base = f"/v1/vms/{vm['id']}"
    assert client.post(f"{base}/exec", json={"cmd": "true"}, headers=AUTH).status_code == 200
    refused = client.post(f"{base}/start", headers=AUTH)
    assert refused.status_code == 409 and "RUNNING" in refused.get_json()["message"]
    assert client.post(f"{base}/stop", headers=AUTH).status_code == 204
    assert "shutdown" in h2.calls and h2.domains[vm["id"]].state == "shutoff"
    assert parse_metadata(h2.domains[vm["id"]].xml).phase.value == "stopping"
    assert world.fakes.guests.by_host[vm["guestIp"]].closed  # its SSH client retired
    assert client.get(base, headers=AUTH).get_json()["state"] == "STOPPED"
    assert [(v["id"], v["state"]) for v in
            client.get("/v1/vms?state=STOPPED", headers=AUTH).get_json()] == \
        [(vm["id"], "STOPPED")]
    answer = client.post(f"{base}/exec", json={"cmd": "true"}, headers=AUTH)
    assert answer.status_code == 409 and "STOPPED" in answer.get_json()["message"]
    refused = client.post(f"{base}/stop", headers=AUTH)
    assert refused.status_code == 409 and "STOPPED" in refused.get_json()["message"]
    # Its disk, filter and address are kept there; nothing of it here.
    assert (("rds-vms", f"{vm['name']}.qcow2") in h2.volumes) and h2.filters == {vm["name"]}
    assert world.hypervisor.domains == {}
    assert client.post(f"{base}/start", headers=AUTH).status_code == 204
    again = client.get(base, headers=AUTH).get_json()
    assert again["state"] == "RUNNING" and again["guestIp"] == vm["guestIp"]
    assert parse_metadata(h2.domains[vm["id"]].xml).phase.value == "ready"
    assert client.post(f"{base}/exec", json={"cmd": "true"}, headers=AUTH).status_code == 200
    assert client.delete(base, headers=AUTH).status_code == 204
    assert h2.domains == {}


def test_a_remote_vm_that_does_not_power_off_is_forced_and_a_failed_start_undone(
        client, world, h2):
    vm = create(client).get_json()
    base = f"/v1/vms/{vm['id']}"
    h2.fail["shutdown"] = HypervisorError("libvirt: the guest ignores ACPI")
    assert client.post(f"{base}/stop", headers=AUTH).status_code == 204
    assert h2.domains[vm["id"]].state == "shutoff"  # powered off
    h2.fail["start"] = HypervisorError("libvirt: cannot start")
    answer = client.post(f"{base}/start", headers=AUTH)
    assert answer.status_code == 503, answer.text
    del h2.fail["start"]
    assert client.get(base, headers=AUTH).get_json()["state"] == "STOPPED"
    assert client.post(f"{base}/start", headers=AUTH).status_code == 204
    assert client.get(base, headers=AUTH).get_json()["state"] == "RUNNING"


def test_a_remote_vms_stats_are_read_from_its_hosts_libvirt(client, world, h2):
    vm = create(client).get_json()
    base = f"/v1/vms/{vm['id']}/stats"
    body = client.get(base, headers=AUTH).get_json()
    assert body["vmId"] == vm["id"] and body["state"] == "RUNNING"
    assert body["cpu"]["timeNs"] == h2.cpu_time_ns == 200_000_000  # its host's counters
    assert world.hypervisor.cpu_time_ns == 0 and body["cpu"]["percent"] > 0
    assert body["memory"] == {"assignedMb": 256, "rssMb": 200.0}
    assert body["network"]["txBytes"] == 200 and 0 <= body["uptimeSeconds"] < 60
    assert client.post(f"/v1/vms/{vm['id']}/stop", headers=AUTH).status_code == 204
    body = client.get(base, headers=AUTH).get_json()
    assert body["state"] == "STOPPED" and body["uptimeSeconds"] is None
    h2.down = HypervisorError("libvirt: unable to connect: Connection refused")
    answer = client.get(base, headers=AUTH)
    assert answer.status_code == 503 and "host h2" in answer.get_json()["message"]


def test_placement_errors_are_clear_and_make_nothing(client, world, h2):
    answer = create(client, {**ON_H2, "placement": {"host": "h9"}})
    assert answer.status_code == 400 and "'h9' is not a host" in answer.get_json()["message"]
    assert create(client, {**ON_H2, "placement": {"host": "No!"}}).status_code == 400
    assert create(client, {**ON_H2, "placement": {}}).status_code == 400
    h2.down = HypervisorError("libvirt: unable to connect: Connection refused")
    answer = create(client)
    assert answer.status_code == 503 and "host h2 is DOWN" in answer.get_json()["message"]
    h2.down = None
    h2.volumes.pop(("rds-images", "default.manifest.json"))
    answer = create(client)
    assert answer.status_code == 409, answer.text
    assert "PUT /v1/hosts/h2/images/default" in answer.get_json()["message"]
    assert h2.domains == {} and h2.filters == set()
    # Without placement (or with 'local') the local host as always.
    assert create(client, {**ON_H2, "placement": {"host": "local"}}).get_json()["host"] == \
        "local"


def test_a_failure_half_way_leaves_nothing_on_either_host(client, world, h2):
    h2.fail["start"] = HypervisorError("libvirt: cannot start")
    answer = create(client)
    assert answer.status_code == 503
    assert h2.domains == {} and h2.filters == set()
    assert [name for pool, name in h2.volumes if pool == "rds-vms"] == []
    assert world.hypervisor.domains == {} and world.hypervisor.filters == set()
    assert not world.settings.vms_dir.exists() or not list(world.settings.vms_dir.iterdir())


def test_the_host_quota_is_its_max_vms(client, h2):
    for _ in range(2):
        assert create(client).status_code == 201
    answer = create(client)
    assert answer.status_code == 429 and "host h2" in answer.get_json()["message"]


def test_the_host_quota_counts_other_managers_creates_under_way(client, h2):
    """One VM of h2's two there; another manager reserves an address for its create just
    before this one's: this create backs off (429) and leaves nothing, the other's entry
    stays; once that one is gone, the place is free again."""
    assert create(client).status_code == 201
    other = DhcpHost(mac="52:54:00:10:01:63", name="rds-0th3rmgr", ip="172.16.1.99")
    h2.before_add_dhcp_host.append(lambda: h2.dhcp["rds-net-h2"].append(other))
    domains = set(h2.domains)
    answer = create(client)
    assert answer.status_code == 429, answer.text
    assert "other managers" in answer.get_json()["message"]
    assert set(h2.domains) == domains and other in h2.dhcp["rds-net-h2"]
    assert len(h2.dhcp["rds-net-h2"]) == 2  # the VM's and the other manager's
    h2.dhcp["rds-net-h2"].remove(other)
    assert create(client).status_code == 201


def test_a_vm_of_a_host_that_does_not_answer_is_503_and_local_vms_work(client, world, h2):
    local = create(client, {"cpu": 1, "memMb": 256}).get_json()
    vm = create(client).get_json()
    h2.down = HypervisorError("libvirt: unable to connect: Connection refused")
    for method, path in (("get", ""), ("post", "/exec"), ("delete", "")):
        answer = getattr(client, method)(f"/v1/vms/{vm['id']}{path}", headers=AUTH,
                                         **({"json": {"cmd": "true"}} if path else {}))
        assert answer.status_code == 503, answer.text
        assert answer.get_json()["message"] == (
            f"VM {vm['id']} is on host h2, which does not answer: libvirt: unable to "
            f"connect: Connection refused")
    listed = client.get("/v1/vms", headers=AUTH).get_json()
    assert [(v["id"], v["state"]) for v in listed] == [(local["id"], "RUNNING"),
                                                        (vm["id"], "UNKNOWN")]
    unknown = client.get("/v1/vms?state=UNKNOWN", headers=AUTH).get_json()
    assert [v["id"] for v in unknown] == [vm["id"]]
    # A VM this process never saw there, while the host does not answer: it may be there.
    other = "0badc0de-0000-4000-8000-000000000000"
    answer = client.get(f"/v1/vms/{other}", headers=AUTH)
    assert answer.status_code == 503 and "(it may be there)" in answer.get_json()["message"]
    assert client.get("/v1/vms/not-a-vm-id", headers=AUTH).status_code == 404
    assert client.post(f"/v1/vms/{local['id']}/exec", json={"cmd": "true"},
                       headers=AUTH).status_code == 200
    h2.down = None
    assert client.get(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 200


def test_the_reaper_deletes_expired_remote_vms_and_finishes_their_deletes(client, world, h2):
    vm = create(client, {**ON_H2, "ttlSeconds": 60}).get_json()
    kept = create(client).get_json()
    assert world.vms.reap() == []
    made = parse_metadata(h2.domains[vm["id"]].xml)
    h2.add(dataclasses.replace(made, expires_at="2000-01-01T00:00:00.000Z"))  # time passed
    assert world.vms.reap() == [f"expired {vm['id']}"]
    assert [info.uuid for info in h2.domains.values()] == [kept["id"]]
    h2.fail["undefine filter"] = HypervisorError("libvirt: a failure half-way")
    assert client.delete(f"/v1/vms/{kept['id']}", headers=AUTH).status_code == 503
    assert client.get(f"/v1/vms/{kept['id']}", headers=AUTH).status_code == 404  # going
    del h2.fail["undefine filter"]
    assert world.vms.reap() == [f"finished the delete of {kept['id']}"]
    assert h2.domains == {} and h2.filters == set()


def test_the_reaper_leaves_a_delete_under_way_to_its_caller(client, world, h2):
    """A delete of this manager holds the VM's lock: the reaper does not remove the same
    volumes beside it (seen by bench_remote.py: the API's delete then failed with "Storage
    volume not found"); once the lock is free, the reaper finishes a delete left half-way."""
    vm = create(client).get_json()
    h2.fail["undefine filter"] = HypervisorError("libvirt: a failure half-way")
    assert client.delete(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 503
    del h2.fail["undefine filter"]
    remote = world.vms.parts.remote
    with remote.locks.held("h2", vm["id"], 1):  # a delete under way (another worker, say)
        assert world.vms.reap() == []
    assert vm["id"] in h2.domains
    assert world.vms.reap() == [f"finished the delete of {vm['id']}"]
    assert h2.domains == {} and not remote.locks.path("h2", vm["id"]).exists()


def test_a_remote_vms_calls_wait_for_its_lock(client, world, h2, monkeypatch):
    """Stop, start, labels, network and delete of one remote VM run one at a time here."""
    vm = create(client).get_json()
    monkeypatch.setattr("app.services.remote_vms.LOCK_TIMEOUT", 0.2)
    remote = world.vms.parts.remote
    with remote.locks.held("h2", vm["id"], 1):
        for method, path, body in (("patch", "", {"labels": {"a": "b"}}),
                                   ("post", "/stop", None), ("delete", "", None)):
            answer = getattr(client, method)(f"/v1/vms/{vm['id']}{path}", headers=AUTH,
                                             json=body)
            assert answer.status_code == 409 and "busy" in answer.get_json()["message"], \
                (path, answer.get_json())
    assert client.delete(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 204
    assert not remote.locks.path("h2", vm["id"]).exists()


def test_what_a_remote_host_cannot_do_yet_is_refused_up_front(client, h2):
    answer = create(client, {**ON_H2, "idleStopSeconds": 60})
    assert answer.status_code == 400 and "idleStopSeconds" in answer.get_json()["message"]
    assert h2.domains == {}


def rules(xml):
    return [(rule.get("action"), rule.get("direction"), int(rule.get("priority")),
             rule[0].tag, dict(rule[0].attrib)) for rule in ET.fromstring(xml).findall("rule")]


def test_the_remote_filter_holds_the_policy_in_its_rules():
    closed = rules(build_remote_filter_xml("rds-1", "u", "172.16.1.0/24", ("10.0.0.0/8",),
                                           False, ("192.0.2.0/24", "2001:db8::/32")))
    accepted_out = [r for r in closed if r[0] == "accept" and r[1] == "out"
                    and r[3] == "all"]
    assert accepted_out == []  # no outboundInternet: allowIps opens nothing
    assert ("drop", "out", 120, "all", {"dstipaddr": "169.254.0.0", "dstipmask": "16"}) in closed
    assert ("drop", "out", 120, "all", {"dstipaddr": "192.0.2.0", "dstipmask": "24"}) in closed
    assert ("drop", "out", 200, "all", {"dstipaddr": "172.16.1.0", "dstipmask": "24"}) in closed
    assert closed[-1] == ("drop", "inout", 1000, "all", {})
    opened = rules(build_remote_filter_xml("rds-1", "u", "172.16.1.0/24",
                                           ("10.0.0.0/8", "172.16.1.1/32", "::1/128"), True))
    assert ("accept", "out", 400, "all", {"dstipaddr": "10.0.0.0", "dstipmask": "8",
                                          "state": "NEW,ESTABLISHED,RELATED"}) in opened
    assert ("accept", "out", 190, "all", {"dstipaddr": "$GATEWAY",
                                          "state": "NEW,ESTABLISHED,RELATED"}) in opened
    assert ("accept", "out", 150, "udp", {"dstipaddr": "$GATEWAY", "dstportstart": "53",
                                          "state": "NEW,ESTABLISHED,RELATED"}) in opened
    # SSH in from outside the guest subnet only (the manager's, routed).
    assert ("drop", "in", 90, "tcp", {"dstportstart": "22", "srcipaddr": "172.16.1.0",
                                      "srcipmask": "24"}) in opened


def placed(tmp_path, monkeypatch, clock, policy, **extra):
    world = World(tmp_path, monkeypatch, clock, HOSTS=json.dumps([H2]), HOST_PROBE_TIMEOUT_S=0.5,
                  PLACEMENT=policy, **extra)
    world.services.shipper.ship("h2", "default")
    return world, create_app({"TESTING": True}, services=world.services).test_client()


def hosts_of(client, count):
    made = []
    for _ in range(count):
        answer = create(client, {"cpu": 1, "memMb": 256, "provisionMode": "boot"})
        assert answer.status_code == 201, answer.text
        made.append(answer.get_json()["host"])
    return made


def test_pack_fills_the_local_host_first_then_the_next(tmp_path, monkeypatch, clock):
    world, client = placed(tmp_path, monkeypatch, clock, "pack")
    try:
        assert hosts_of(client, 5) == ["local"] * 3 + ["h2"] * 2  # MAX_VMS 3, h2's maxVms 2
        answer = create(client, {"cpu": 1, "memMb": 256})
        assert answer.status_code == 429, answer.text
        assert answer.get_json()["message"] == (
            "no host has room for a VM of 1 vCPU 256 MiB (local: at its maxVms (3); h2: at its "
            "maxVms (2))")
    finally:
        world.services.close()


def test_spread_takes_the_least_full_host(tmp_path, monkeypatch, clock):
    world, client = placed(tmp_path, monkeypatch, clock, "spread")
    try:
        assert hosts_of(client, 4) == ["local", "h2", "local", "h2"]
        # A host DOWN, or without the image, has no room: the others are chosen.
        world.fakes.remotes["h2"].volumes.pop(("rds-images", "default.manifest.json"))
        assert hosts_of(client, 1) == ["local"]
        answer = create(client, {"cpu": 1, "memMb": 256})
        assert answer.status_code == 429
        assert "h2: the image is not ready there" in answer.get_json()["message"]
    finally:
        world.services.close()


def test_spread_skips_a_host_that_is_down_or_too_small(tmp_path, monkeypatch, clock):
    world, client = placed(tmp_path, monkeypatch, clock, "spread")
    try:
        world.fakes.remotes["h2"].down = HypervisorError("libvirt: Connection refused")
        assert hosts_of(client, 2) == ["local", "local"]
        world.fakes.remotes["h2"].down = None
        assert hosts_of(client, 1) == ["h2"]
        answer = create(client, {"cpu": 1, "memMb": 30000})
        assert answer.status_code in (400, 429), answer.text  # over MAX_MEM_MB, or no room
        # A named host, a disk snapshot or an idle stop is not placed by the policy.
        assert create(client, {**ON_H2, "placement": {"host": "local"}}).get_json()["host"] \
            == "local"
    finally:
        world.services.close()


def test_the_default_placement_is_the_local_host(client, h2):
    assert hosts_of(client, 2) == ["local", "local"]


def test_placement_must_be_a_known_policy(tmp_path):
    from app.config import ConfigError
    from tests.unit.fakes import unit_settings
    assert unit_settings(tmp_path, PLACEMENT="spread").placement == "spread"
    with pytest.raises(ConfigError, match="PLACEMENT must be one of local, spread, pack"):
        unit_settings(tmp_path, PLACEMENT="random")


def test_the_hosts_own_addresses_are_reached_only_when_named_exactly():
    found = rules(build_remote_filter_xml(
        "rds-1", "u", "172.16.1.0/24", ("0.0.0.0/0", "10.210.0.1/32"), True,
        hosts=("10.210.0.1/32", "10.210.0.2/32")))
    order = [(r[0], r[2], r[4].get("dstipaddr"), r[4].get("dstipmask")) for r in found
             if r[3] == "all" and r[1] == "out" and r[2] >= 300]
    assert order == [("accept", 300, "10.210.0.1", "32"),  # named exactly: reachable
                     ("drop", 350, "10.210.0.1", "32"), ("drop", 350, "10.210.0.2", "32"),
                     ("accept", 400, "0.0.0.0", "0")]  # the rest of the world


def test_a_remote_vms_filter_keeps_the_managers_and_the_hosts_addresses_out(client, world,
                                                                            h2, monkeypatch):
    monkeypatch.setattr(world.parts.remote, "own_addresses", lambda: ["10.0.2.15/32"])
    create(client, {**ON_H2, "allowIps": ["0.0.0.0/0"], "outboundInternet": True})
    (xml,) = [xml for xml in h2.filter_xml.values()]
    dropped = {r[4]["dstipaddr"] for r in rules(xml) if r[0] == "drop" and r[2] == 350}
    assert dropped == {"10.0.2.15", "10.210.0.2"}  # this manager's, the host's (its URI)


@pytest.mark.parametrize("world_settings", [{**remote_hosts.hosts_settings(
    {**H2, "hostAddresses": ["192.0.2.0/24", "198.51.100.7"]}), "STOP_TIMEOUT_S": "0.5",
    "SNAPSHOT_SHAPES": ""}])
def test_a_remote_vms_filter_keeps_the_hosts_listed_addresses_out(client, world, h2,
                                                                  monkeypatch):
    """hostAddresses (the host's other addresses, which libvirt cannot tell) join this
    manager's and the URI's: dropped through a wider range, at create and at a network
    change; an address of them that allowIps names exactly stays reachable."""
    monkeypatch.setattr(world.parts.remote, "own_addresses", lambda: ["10.0.2.15/32"])
    shown = client.get("/v1/hosts/h2", headers=AUTH).get_json()["hostAddresses"]
    assert shown == ["192.0.2.0/24", "198.51.100.7/32"]  # the operator sees what is kept out
    vm = create(client, {**ON_H2, "allowIps": ["0.0.0.0/0"], "outboundInternet": True})
    assert vm.status_code == 201, vm.text
    expected = {("10.0.2.15", "32"), ("10.210.0.2", "32"), ("192.0.2.0", "24"),
                ("198.51.100.7", "32")}

    def blocked_and_pinned():
        (xml,) = h2.filter_xml.values()
        found = rules(xml)
        return ({(r[4]["dstipaddr"], r[4]["dstipmask"]) for r in found
                 if r[0] == "drop" and r[2] == 350},
                {(r[4]["dstipaddr"], r[4]["dstipmask"]) for r in found
                 if r[0] == "accept" and r[2] == 300})
    assert blocked_and_pinned() == (expected, set())
    changed = client.put(f"/v1/vms/{vm.get_json()['id']}/network", headers=AUTH, json={
        "allowIps": ["10.0.0.0/8", "192.0.2.9/32"], "outboundInternet": True})
    assert changed.status_code == 200, changed.text
    assert blocked_and_pinned() == (expected, {("192.0.2.9", "32")})
