"""Domain XML: golden files per accelerator, and the metadata round trip."""
from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app.config import REPO_ROOT
from app.models import VmPhase, VmRecord, VmRole
from app.virt import domain_xml
from app.virt.domain_xml import (BUILD_LOG_CHANNEL, SANDBOX_ASLR_WORD, BootFiles, BuildDevices,
                                 DomainParams, build_domain_xml, device_fingerprint,
                                 kernel_cmdline, port_name)
from app.virt.metadata_xml import METADATA_NS, metadata_xml, parse_metadata

XML_DIR = Path(__file__).parent / "data" / "xml"
TEMPLATE = REPO_ROOT / "vm-templates" / "default" / "domain.xml"

RECORD = VmRecord(
    id="0b5c1a3e-2f4d-4c6b-9a8e-1d2c3b4a5f60", name="rds-0b5c1a3e", cpu=2, mem_mb=512,
    guest_ip="172.16.0.2", mac="52:54:00:10:00:02", allow_ips=("1.1.1.1/32", "10.0.0.0/8"),
    outbound_internet=True, image_id="default",
    image_path="/var/lib/run-dat-sheesh/images/debian-bookworm/abc123", disk_size_mb=4096,
    created_at="2024-05-01T12:00:00.000Z", provision_mode="boot",
    host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleHostKeyForUnitTests",
    phase=VmPhase.STARTING)
VM_DIR = "/var/lib/run-dat-sheesh/vms/rds-0b5c1a3e"


def params(accelerator: str) -> DomainParams:
    build = "/var/lib/run-dat-sheesh/images/debian-bookworm/abc123"
    return DomainParams(
        accelerator=accelerator,
        boot=BootFiles(kernel=f"{build}/vmlinuz", initrd=f"{build}/initrd.img",
                       cmdline="console=ttyS0 root=/dev/vda rw rds.ip=172.16.0.2"),
        overlay_path=f"{VM_DIR}/disk.qcow2", port=RECORD.name,
        console_log=f"{VM_DIR}/console.log", identity_socket=f"{VM_DIR}/identity.sock",
        fwcfg_files=(("ssh_host_ed25519_key", f"{VM_DIR}/ssh_host_ed25519_key"),
                     ("authorized_keys", f"{VM_DIR}/authorized_keys")))


@pytest.mark.parametrize(("case", "accelerator"), [("domain-kvm", "kvm"),
                                                   ("domain-tcg", "qemu")])
def test_golden(golden, case, accelerator):
    template = (XML_DIR / f"{case}-in.xml").read_text()
    golden(f"xml/{case}-out.xml", build_domain_xml(template, RECORD, params(accelerator)))


def test_real_template_builds():
    root = ET.fromstring(build_domain_xml(TEMPLATE.read_text(), RECORD, params("kvm")))
    assert root.get("type") == "kvm"
    assert root.findtext("name") == RECORD.name
    assert root.findtext("uuid") == RECORD.id
    assert root.find("devices/disk/source").get("file") == f"{VM_DIR}/disk.qcow2"
    nic = root.find("devices/interface")
    assert nic.find("mac").get("address") == RECORD.mac
    assert nic.get("type") == "ethernet" and nic.find("filterref") is None
    assert nic.find("target").attrib == {"dev": RECORD.name, "managed": "no"}


def test_building_twice_changes_nothing():
    once = build_domain_xml(TEMPLATE.read_text(), RECORD, params("qemu"))
    assert build_domain_xml(once, RECORD, params("qemu")) == once


def test_switching_accelerator_replaces_cpu_and_tcg_features():
    kvm = build_domain_xml(TEMPLATE.read_text(), RECORD, params("kvm"))
    root = ET.fromstring(build_domain_xml(kvm, RECORD, params("qemu")))
    assert [cpu.get("mode") for cpu in root.findall("cpu")] == ["maximum"]
    assert len(root.findall("features/tcg")) == 1
    root = ET.fromstring(build_domain_xml(ET.tostring(root, encoding="unicode"), RECORD,
                                          params("kvm")))
    assert [cpu.get("mode") for cpu in root.findall("cpu")] == ["host-passthrough"]
    assert root.findall("features/tcg") == []


def test_metadata_round_trips_through_the_domain():
    xml = build_domain_xml(TEMPLATE.read_text(), RECORD, params("kvm"))
    assert parse_metadata(xml) == RECORD


@pytest.mark.parametrize("changes", [
    {"allow_ips": (), "outbound_internet": False},
    {"phase": VmPhase.READY, "provision_mode": "pool"},
    {"snapshot_id": "5a1e0c2d-7b3f-4e6a-9c8d-0f1e2d3c4b5a"},
])
def test_metadata_round_trips_variants(changes):
    record = dataclasses.replace(RECORD, **changes)
    assert parse_metadata(build_domain_xml(TEMPLATE.read_text(), record, params("qemu"))) == record


def test_a_record_text_read_again_is_not_parsed_again():
    first = metadata_xml(RECORD)
    changed = metadata_xml(dataclasses.replace(RECORD, phase=VmPhase.DELETING))
    assert parse_metadata(first) is parse_metadata(first) == RECORD
    assert parse_metadata(changed).phase is VmPhase.DELETING  # new text: parsed afresh
    assert parse_metadata("<vm><id>broken") is None


def test_metadata_xml_has_no_namespace():
    text = metadata_xml(RECORD)
    element = ET.fromstring(text)
    assert element.tag == "vm"
    assert "xmlns" not in text and "rds:" not in text and METADATA_NS not in text
    assert element.findtext("guestIp") == RECORD.guest_ip
    assert [ip.text for ip in element.iterfind("allowIps/ip")] == list(RECORD.allow_ips)


def test_metadata_as_libvirt_returns_it_parses():
    # libvirt hands back the element with the namespace it was stored under.
    namespaced = metadata_xml(RECORD).replace("<vm>", f'<vm xmlns="{METADATA_NS}">', 1)
    assert parse_metadata(namespaced) == RECORD


@pytest.mark.parametrize("xml", [
    "not xml", "<domain><name>rds-x</name></domain>",
    f'<vm xmlns="{METADATA_NS}"><cpu>two</cpu></vm>'])
def test_parse_metadata_rejects_foreign_or_broken_xml(xml):
    assert parse_metadata(xml) is None


def test_snapshot_id_is_written_only_when_set():
    assert "snapshotId" not in metadata_xml(RECORD)
    record = dataclasses.replace(RECORD, snapshot_id="5a1e0c2d-7b3f-4e6a-9c8d-0f1e2d3c4b5a")
    assert ET.fromstring(metadata_xml(record)).findtext("snapshotId") == record.snapshot_id


def test_port_name_is_the_domain_name_or_a_digest_that_fits():
    assert port_name("rds-0b5c1a3e") == "rds-0b5c1a3e"
    long = port_name("rds-seed-default-1c-256m-872dc9e9ac")
    assert long.startswith("rds-") and len(long) == 15
    assert long == port_name("rds-seed-default-1c-256m-872dc9e9ac")
    assert long != port_name("rds-seed-default-1c-512m-872dc9e9ac")


def test_mitigations_are_off_only_under_tcg():
    """Under KVM the guest kernel keeps its CPU-vulnerability mitigations, even when the
    template asks for mitigations=off; under TCG they protect nothing and cost a lot."""
    base = "console=ttyS0 root=/dev/vda rw mitigations=off quiet"
    assert kernel_cmdline(base, "kvm", "rds.hostname=x").split() == [
        "console=ttyS0", "root=/dev/vda", "rw", "quiet", "rds.hostname=x"]
    assert "mitigations=off" in kernel_cmdline("quiet", "qemu").split()
    assert "mitigations" not in kernel_cmdline("quiet mitigations=auto", "kvm")


def test_the_sandbox_user_loses_address_randomization_only_under_tcg():
    """rds.sandbox_aslr=off (read by the guest's sandbox-shell) under TCG only, once, and a
    template cannot ask for it under KVM."""
    assert kernel_cmdline("quiet", "qemu").split().count("rds.sandbox_aslr=off") == 1
    assert kernel_cmdline("quiet rds.sandbox_aslr=off", "qemu").split().count(
        "rds.sandbox_aslr=off") == 1
    assert "rds.sandbox_aslr" not in kernel_cmdline("quiet", "kvm")
    assert "rds.sandbox_aslr" not in kernel_cmdline("quiet rds.sandbox_aslr=off", "kvm")


def test_the_sandbox_shell_reads_the_word_the_manager_writes():
    source = (REPO_ROOT / "guest/build/sandbox-shell.c").read_text()
    assert f'#define WORD "{SANDBOX_ASLR_WORD}"' in source


def test_the_default_template_leaves_mitigations_to_the_accelerator():
    from app.services.templates import TemplateCatalog
    from app.config import REPO_ROOT
    template = TemplateCatalog(str(REPO_ROOT / "vm-templates"), REPO_ROOT / "nowhere",
                               "default").get(None)
    assert "mitigations" not in template.kernel_cmdline


def test_golden_build_vm(golden):
    """An image's build VM: the inputs disk after its own, the build-log port after the
    identity port."""
    build = dataclasses.replace(params("qemu"), build=BuildDevices(
        inputs="/var/lib/run-dat-sheesh/images/custom/node/.build-x/inputs.tar",
        log_socket=f"{VM_DIR}/qemu/build-log.sock"))
    record = dataclasses.replace(RECORD, role=VmRole.BUILD)
    xml = build_domain_xml((XML_DIR / "domain-tcg-in.xml").read_text(), record, build)
    golden("xml/domain-build-out.xml", xml)
    devices = ET.fromstring(xml).find("devices")
    assert [disk.find("target").get("dev") for disk in devices.findall("disk")] == ["vda",
                                                                                    "vdb"]
    assert devices.findall("disk")[1].find("readonly") is not None
    assert devices.findall("channel")[-1].find("target").get("name") == BUILD_LOG_CHANNEL
    assert "run-dat-sheesh build default" in ET.fromstring(xml).findtext("title")


def test_a_guest_reset_or_crash_powers_the_domain_off():
    """A guest that resets itself (a kernel panic under panic=-1) must not come back behind the
    API's back: every lifecycle event destroys the domain, in libvirt's element order, whatever
    the template said (or did not say)."""
    for template in (TEMPLATE.read_text(),
                     "<domain><name>x</name><clock offset='utc'/><devices>"
                     "<disk device='disk'/><interface/></devices></domain>"):
        root = ET.fromstring(build_domain_xml(template, RECORD, params("qemu")))
        tags = [child.tag for child in root]
        events = ["on_poweroff", "on_reboot", "on_crash"]
        assert [tag for tag in tags if tag.startswith("on_")] == events
        assert tags.index("clock") + 1 == tags.index("on_poweroff")
        assert tags.index("on_crash") < tags.index("devices")
        assert {tag: root.findtext(tag) for tag in events} == dict.fromkeys(events, "destroy")

def test_every_vm_gets_a_balloon_with_free_page_reporting():
    xml = build_domain_xml((XML_DIR / "domain-tcg-in.xml").read_text(), RECORD, params("qemu"))
    balloons = ET.fromstring(xml).findall("devices/memballoon")
    assert [b.attrib for b in balloons] == [{"model": "virtio", "freePageReporting": "on"}]


def test_a_saved_balloon_keeps_its_address():
    """A seed's saved XML carries the balloon's PCI address; the clone must keep it."""
    saved = ET.fromstring(build_domain_xml(TEMPLATE.read_text(), RECORD, params("qemu")))
    balloon = saved.find("devices/memballoon")
    ET.SubElement(balloon, "address", {"type": "pci", "bus": "0x00", "slot": "0x07"})
    clone = ET.fromstring(build_domain_xml(ET.tostring(saved, encoding="unicode"), RECORD,
                                           params("qemu")))
    assert clone.find("devices/memballoon/address").get("slot") == "0x07"


def test_device_fingerprint_follows_the_devices_not_the_identity(monkeypatch):
    template = TEMPLATE.read_text()
    before = device_fingerprint(template, "qemu")
    assert before and before == device_fingerprint(template, "qemu")
    assert device_fingerprint(template, "kvm") != before
    assert device_fingerprint("<domain/>", "qemu") == ""  # nothing this module can build
    monkeypatch.setattr(domain_xml, "_set_memballoon", drop_balloon)
    assert device_fingerprint(template, "qemu") != before  # other devices: other snapshots


def drop_balloon(devices):
    devices.remove(devices.find("memballoon"))
