"""Memory snapshots on a remote host (HOSTS, issue 17) over fakes: shipping an image makes one
per SNAPSHOT_SHAPES shape there (through that host's libvirt only, nothing of the build left),
``GET /v1/images`` says so per host, creates there restore from it (a copy of its save image
whose header names the VM, the identity through libvirt's channel), a failed restore falls back
to a boot leaving nothing of the attempt, and outdated ones are pruned unless a VM uses them."""
from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from app.errors import GuestUnreachable, HypervisorError
from app.models import VmSpec
from app.services.placement import Room, choose
from app.services.remote_seeds import saved_seeds, seed_name
from app.virt import save_image
from app.virt.domain_xml import IDENTITY_CHANNEL
from app.virt.metadata_xml import parse_metadata
from app.virt.pool_xml import build_overlay_volume_xml
from tests.unit import remote_hosts
from tests.unit.fakes import API_KEY, NEW_BUILD

AUTH = {"X-API-Key": API_KEY}
ON_H2 = {"cpu": 1, "memMb": 256, "placement": {"host": "h2"}}
IMAGES, VMS = "rds-images", "rds-vms"


@pytest.fixture
def world_settings():
    return remote_hosts.hosts_settings(remote_hosts.H2)


@pytest.fixture
def h2(world):
    return world.fakes.remotes["h2"]


def ship(client):
    answer = client.put("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.get_json()


def h2_readiness(client):
    images = client.get("/v1/images", headers=AUTH).get_json()
    default = next(image for image in images if image["id"] == "default")
    return next(host for host in default["hosts"] if host["name"] == "h2")


def test_shipping_makes_the_memory_snapshot_there_and_leaves_only_it(client, h2):
    shipment = ship(client)
    assert shipment["memorySnapshotError"] is None
    [key] = shipment["memorySnapshots"]
    name = seed_name(key)
    assert key.startswith("default-1c-256m-")
    volumes = {volume for pool, volume in h2.volumes if pool == IMAGES}
    assert {f"{name}.qcow2", f"{name}.sav", f"{name}.seed.json"} <= volumes
    assert not any(volume.startswith(name) and volume.endswith(("_key", "authorized_keys"))
                   for volume in volumes)
    assert saved_seeds(volumes) == {key}
    # Its guest ran sealed off (a drop-all filter, no address), was saved there, then went.
    saved = save_image.parse_header(h2.volumes[(IMAGES, f"{name}.sav")], "seed").xml
    nic = ET.fromstring(saved).find("devices/interface")
    assert nic.find("filterref").get("filter") == name and nic.findall("filterref/parameter") \
        == []
    assert "rds.ip=" not in ET.fromstring(saved).findtext("os/cmdline")
    assert h2.domains == {} and h2.filters == set()
    assert "agent /usr/local/lib/rds/settle" in h2.calls
    overlay = ET.fromstring(h2.volumes[(IMAGES, f"{name}.qcow2")])
    assert overlay.findtext("backingStore/path") == \
        "/var/lib/libvirt/images/rds-images/default.qcow2"
    assert h2_readiness(client) == {"name": "h2", "ready": True, "snapshotReady": True}
    # Shipping again finds it: no second build.
    saves = h2.calls.count("save_domain")
    assert ship(client)["memorySnapshots"] == [key] and h2.calls.count("save_domain") == saves


def test_a_create_there_restores_the_snapshot_under_its_own_identity(client, world, h2):
    [key] = ship(client)["memorySnapshots"]
    answer = client.post("/v1/vms", json=ON_H2, headers=AUTH)
    assert answer.status_code == 201, answer.text
    vm = answer.get_json()
    assert vm["provisionMode"] == "snapshot" and vm["host"] == "h2"
    name = vm["name"]
    # The save image restored was a copy whose header is the VM's own domain.
    restored = h2.restored[-1]
    record = parse_metadata(restored)
    assert record.id == vm["id"] and record.seed == key and record.host == "h2"
    domain = ET.fromstring(restored)
    assert domain.findtext("name") == name
    nic = domain.find("devices/interface")
    assert nic.find("filterref").get("filter") == name
    assert {p.get("name"): p.get("value") for p in nic.findall("filterref/parameter")} == \
        {"IP": vm["guestIp"], "GATEWAY": "172.16.1.1"}
    assert (VMS, f"{name}.restore.sav") not in h2.volumes  # removed once restored
    overlay = ET.fromstring(h2.volumes[(VMS, f"{name}.qcow2")])
    assert overlay.findtext("backingStore/path") == \
        f"/var/lib/libvirt/images/rds-images/{seed_name(key)}.qcow2"
    # The identity went through libvirt's channel: its MAC, address, gateway, name, key.
    [(uuid, channel, request)] = h2.channel_requests
    assert (uuid, channel) == (vm["id"], IDENTITY_CHANNEL)
    first = request.decode().splitlines()[0]
    assert first == f"{record.mac} {vm['guestIp']}/24 172.16.1.1 {name}"
    assert h2.calls.index("restore_domain") < h2.calls.index(f"channel {IDENTITY_CHANNEL}")
    assert "set_guest_time" in h2.calls
    assert client.delete(f"/v1/vms/{vm['id']}", headers=AUTH).status_code == 204
    assert not any(pool == VMS for pool, _ in h2.volumes) and h2.domains == {}


@pytest.mark.parametrize("failure", ["restore", "identity"])
def test_a_failed_restore_falls_back_to_a_boot_leaving_nothing_of_it(client, world, h2,
                                                                     failure):
    ship(client)
    if failure == "restore":
        h2.fail["restore_domain"] = HypervisorError("libvirt: internal error")
    else:
        h2.channel_reply = "error ip address add failed"
    answer = client.post("/v1/vms", json=ON_H2, headers=AUTH)
    assert answer.status_code == 201, answer.text
    vm = answer.get_json()
    assert vm["provisionMode"] == "boot"
    # One VM there: the boot's; nothing of the attempt (its volumes, filter, reservation).
    assert [info.name for info in h2.domains.values()] == [vm["name"]]
    assert h2.filters == {vm["name"]}
    assert sorted(v for p, v in h2.volumes if p == VMS and not v.startswith(vm["name"])) == []
    assert len(h2.dhcp["rds-net-h2"]) == 1


def test_provision_mode_boot_never_restores(client, h2):
    ship(client)
    answer = client.post("/v1/vms", json={**ON_H2, "provisionMode": "boot"}, headers=AUTH)
    assert answer.status_code == 201 and answer.get_json()["provisionMode"] == "boot"
    assert h2.restored == []


def test_a_failed_build_is_reported_and_leaves_the_image_ready_and_nothing_else(client, h2,
                                                                              monkeypatch):
    def never_idle(*_args):
        raise GuestUnreachable("seed guest rds-seed-x did not come up within 1s")
    monkeypatch.setattr("app.services.remote_seeds.wait_idle", never_idle)
    shipment = ship(client)
    assert shipment["memorySnapshots"] == []
    assert "did not come up" in shipment["memorySnapshotError"]
    assert h2.domains == {} and h2.filters == set()
    assert not any(volume.startswith("rds-seed-") for _pool, volume in h2.volumes)
    assert h2_readiness(client) == {"name": "h2", "ready": True, "snapshotReady": False}
    answer = client.post("/v1/vms", json=ON_H2, headers=AUTH)
    assert answer.status_code == 201 and answer.get_json()["provisionMode"] == "boot"


def test_outdated_snapshots_are_pruned_unless_a_vm_uses_them(client, world, h2):
    [current] = ship(client)["memorySnapshots"]
    for old in ("default-1c-256m-0ld0ld0ld0", "default-1c-256m-us3dus3dus"):
        for suffix in (".qcow2", ".sav", ".seed.json"):
            h2.volumes[(IMAGES, seed_name(old) + suffix)] = b"x"
    seeds = world.services.vms.parts.remote.seeds
    assert seeds.prune("h2", {"default-1c-256m-us3dus3dus"}) == ["default-1c-256m-0ld0ld0ld0"]
    assert saved_seeds(v for _p, v in h2.volumes) == {current, "default-1c-256m-us3dus3dus"}


def test_the_maintainer_makes_a_missing_snapshot_and_prunes(client, world, h2):
    ship(client)
    [key] = saved_seeds(v for _p, v in h2.volumes)
    for suffix in (".qcow2", ".sav", ".seed.json"):
        del h2.volumes[(IMAGES, seed_name(key) + suffix)]
    h2.volumes[(IMAGES, seed_name("default-1c-256m-0ld0ld0ld0") + ".seed.json")] = b"{}"
    h2.volumes[(IMAGES, seed_name("default-1c-256m-0ld0ld0ld0") + ".sav")] = b"x"
    h2.volumes[(IMAGES, seed_name("default-1c-256m-0ld0ld0ld0") + ".qcow2")] = b"x"
    done = world.services.shipper.ship_missing()
    assert done == ["removed memory snapshot default-1c-256m-0ld0ld0ld0 of h2",
                    "memory snapshots of image default on h2"], done
    assert saved_seeds(v for _p, v in h2.volumes) == {key}


def test_a_snapshot_of_a_restored_vm_takes_the_snapshot_disk_in(client, world, h2,
                                                                monkeypatch):
    """Its overlay is on the memory snapshot's disk there: that disk is copied too (after the
    thaw), both backings checked, and the VM's overlay rebased onto the local build in safe
    mode through the copy (put on the build with ``-u`` first), which is removed after."""
    [key] = ship(client)["memorySnapshots"]
    vm = client.post("/v1/vms", json=ON_H2, headers=AUTH).get_json()
    assert vm["provisionMode"] == "snapshot"
    downloads = []
    download = h2.download_volume

    def watched(pool, name, sink, timeout):
        downloads.append((pool, name, h2.frozen))
        return download(pool, name, sink, timeout)
    monkeypatch.setattr(h2, "download_volume", watched)
    answer = client.post(f"/v1/vms/{vm['id']}/snapshots", headers=AUTH)
    assert answer.status_code == 201, answer.text
    # The VM's overlay while its guest is frozen; the snapshot's disk after the thaw.
    assert [d for d in downloads if d[1].endswith(".qcow2")] == [
        (VMS, f"{vm['name']}.qcow2", True), (IMAGES, f"{seed_name(key)}.qcow2", False)]
    steps = [call[0] for call in world.disks.calls]
    image_here = world.build(NEW_BUILD) / "disk.qcow2"
    copy_name = f".{seed_name(key)}.qcow2"
    assert steps == ["info", "info", "rebase", "rebase", "rebase", "check"], steps
    vm_disk, seed_copy = world.disks.calls[0][1], world.disks.calls[1][1]
    assert seed_copy.name == copy_name and not seed_copy.exists()
    assert world.disks.calls[2][1:] == (seed_copy, image_here, True)
    assert world.disks.calls[3][1:] == (vm_disk, seed_copy, True)
    assert world.disks.calls[4][1:] == (vm_disk, image_here, False)  # safe: copies clusters


def test_a_restored_vm_whose_snapshot_disk_is_not_on_the_image_is_refused(client, world, h2):
    [key] = ship(client)["memorySnapshots"]
    vm = client.post("/v1/vms", json=ON_H2, headers=AUTH).get_json()
    h2.volumes[(IMAGES, f"{seed_name(key)}.qcow2")] = build_overlay_volume_xml(
        "x", 1024, "/etc/shadow").encode()
    answer = client.post(f"/v1/vms/{vm['id']}/snapshots", headers=AUTH)
    assert answer.status_code == 503, answer.text
    assert "not an overlay of its image's volume" in answer.get_json()["message"]
    assert not list(world.settings.snapshots_dir.glob("*/disk.qcow2"))
    assert not list(world.settings.snapshots_dir.rglob(f".{seed_name(key)}.qcow2"))


def test_spread_prefers_the_host_with_a_snapshot_among_equally_full_ones():
    spec = VmSpec(cpu=1, mem_mb=256)
    local, h2 = Room("local", 1, 10, 9000), Room("h2", 1, 10, 1000, snapshot_ready=True)
    assert choose("spread", spec, [local, h2]) == "h2"
    assert choose("spread", spec, [local, dataclasses.replace(h2, vms=2)]) == "local"
    assert choose("pack", spec, [local, h2]) == "local"  # pack fills in order


@pytest.mark.parametrize("world_settings", [{**remote_hosts.hosts_settings(remote_hosts.H2),
                                             "PLACEMENT": "spread"}])
def test_a_spread_create_goes_where_it_is_restored(client, h2):
    """Both hosts empty and alike; only h2 has the memory snapshot (this host's are not made
    over the fakes): the create goes there and is restored; asked to boot, it stays here."""
    ship(client)
    booted = client.post("/v1/vms", json={"cpu": 1, "memMb": 256, "provisionMode": "boot"},
                         headers=AUTH)
    assert booted.status_code == 201 and booted.get_json()["host"] == "local"
    assert client.delete(f"/v1/vms/{booted.get_json()['id']}", headers=AUTH).status_code == 204
    answer = client.post("/v1/vms", json={"cpu": 1, "memMb": 256}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert (answer.get_json()["host"], answer.get_json()["provisionMode"]) == ("h2", "snapshot")
