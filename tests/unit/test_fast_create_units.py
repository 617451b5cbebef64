"""Pure parts of fast create: the save-image format, seed naming/pruning, config shapes and the
maintainer's pool decisions (fakes instead of libvirt)."""
from __future__ import annotations

import dataclasses
import struct

import pytest

from app.config import REPO_ROOT, ConfigError, load_settings, parse_shapes
from app.models import Template
from app.services.seeds import SeedStore
from app.services.templates import ImageBuild
from app.virt import domain_xml, save_image

XML = "<domain type='qemu'><name>rds-seed</name></domain>\n"
COOKIE = b"<cookie>\n  <slirpHelper/>\n</cookie>\n"
STREAM = b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 64


def write_save_image(path, xml=XML, data_len=4096, magic=save_image.MAGIC, compressed=0):
    xml_bytes = xml.encode() + b"\0"
    data = (xml_bytes + COOKIE + b"\0").ljust(data_len, b"\0")
    header = struct.pack("=16s5I56s", magic, 2, data_len, 1, compressed, len(xml_bytes),
                         b"\0" * 56)
    path.write_bytes(header + data + STREAM)


def test_header_is_read(tmp_path):
    write_save_image(tmp_path / "seed.sav")
    header = save_image.read_header(tmp_path / "seed.sav")
    assert header.xml == XML and header.cookie == COOKIE.rstrip(b"\0")
    assert header.stream_offset == save_image.HEADER_SIZE + 4096


def test_clone_carries_the_new_xml_and_the_same_stream(tmp_path):
    write_save_image(tmp_path / "seed.sav")
    clone_xml = XML.replace("rds-seed", "rds-0b5c1a3e") + "<!-- longer -->"
    save_image.write_clone(tmp_path / "seed.sav", tmp_path / "clone.sav", clone_xml)
    header = save_image.read_header(tmp_path / "clone.sav")
    assert header.xml == clone_xml and header.cookie == COOKIE.rstrip(b"\0")
    assert header.data_len == 4096 and header.was_running == 1
    raw = (tmp_path / "clone.sav").read_bytes()
    assert raw[header.stream_offset:] == STREAM
    assert (tmp_path / "clone.sav").stat().st_mode & 0o777 == 0o600


def test_a_clone_across_filesystems_is_copied_by_hand(tmp_path, monkeypatch):
    """copy_file_range refuses files on two filesystems (EXDEV: the seeds and the VMs on
    different disks, seen with STORAGE_ROOT on its own filesystem): read and write instead."""
    import errno
    calls = []

    def cross_device(*args):
        calls.append(args)
        if len(calls) == 1:  # the first chunk went through, then the kernel refused
            return os_copy(args[0], args[1], 3, args[3])
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    os_copy = save_image.os.copy_file_range
    monkeypatch.setattr(save_image.os, "copy_file_range", cross_device)
    write_save_image(tmp_path / "seed.sav")
    save_image.write_clone(tmp_path / "seed.sav", tmp_path / "clone.sav", XML)
    header = save_image.read_header(tmp_path / "clone.sav")
    assert (tmp_path / "clone.sav").read_bytes()[header.stream_offset:] == STREAM
    assert len(calls) == 2


def test_a_full_disk_leaves_no_partial_clone(tmp_path, monkeypatch):
    import errno

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(save_image.os, "copy_file_range", full)
    write_save_image(tmp_path / "seed.sav")
    with pytest.raises(OSError, match="No space"):
        save_image.write_clone(tmp_path / "seed.sav", tmp_path / "clone.sav", XML)
    assert not (tmp_path / "clone.sav").exists()


def test_xml_that_does_not_fit_is_refused_and_nothing_written(tmp_path):
    write_save_image(tmp_path / "seed.sav", data_len=200)
    with pytest.raises(save_image.SaveImageError, match="does not fit"):
        save_image.write_clone(tmp_path / "seed.sav", tmp_path / "clone.sav", XML * 10)
    assert not (tmp_path / "clone.sav").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"magic": b"LibvirtQemudPart"}, "not a libvirt save image"),
    ({"compressed": 1}, "unsupported"),
])
def test_unusable_images_are_refused(tmp_path, kwargs, message):
    write_save_image(tmp_path / "seed.sav", **kwargs)
    with pytest.raises(save_image.SaveImageError, match=message):
        save_image.read_header(tmp_path / "seed.sav")


TEMPLATE = Template(id="default", description="", image="debian-bookworm",
                    domain_xml="<domain/>", default_disk_size_mb=4096,
                    kernel_cmdline="console=ttyS0")


def build_at(path) -> ImageBuild:
    return ImageBuild(path=path, disk=path / "disk.qcow2", kernel=path / "vmlinuz",
                      initrd=path / "initrd.img", disk_size_mb=4096)


def test_seed_key_changes_with_everything_the_saved_guest_depends_on(tmp_path):
    store = SeedStore(tmp_path, "qemu", lambda: "7.2.0")
    key = store.key(TEMPLATE, build_at(tmp_path / "a"), 1, 256, 4096)
    assert key.startswith("default-1c-256m-")
    others = {
        store.key(TEMPLATE, build_at(tmp_path / "b"), 1, 256, 4096),
        store.key(dataclasses.replace(TEMPLATE, domain_xml="<domain><x/></domain>"),
                  build_at(tmp_path / "a"), 1, 256, 4096),
        store.key(dataclasses.replace(TEMPLATE, kernel_cmdline="quiet"),
                  build_at(tmp_path / "a"), 1, 256, 4096),
        store.key(TEMPLATE, build_at(tmp_path / "a"), 1, 256, 8192),
        SeedStore(tmp_path, "kvm", lambda: "7.2.0").key(TEMPLATE, build_at(tmp_path / "a"), 1, 256,
                                                         4096),
        SeedStore(tmp_path, "qemu", lambda: "8.0.0").key(TEMPLATE, build_at(tmp_path / "a"), 1,
                                                          256, 4096),
    }
    assert key not in others and len(others) == 6


def test_seed_key_changes_with_the_devices_a_vm_gets(tmp_path, monkeypatch):
    """A memory snapshot saved with other devices cannot be restored: when the domain XML
    builder changes them, the old snapshot is simply not found (a new one is saved)."""
    template = dataclasses.replace(TEMPLATE, domain_xml=(
        REPO_ROOT / "vm-templates" / "default" / "domain.xml").read_text())
    store = SeedStore(tmp_path, "qemu", lambda: "7.2.0")
    key = store.key(template, build_at(tmp_path / "a"), 1, 256, 4096)
    monkeypatch.setattr(domain_xml, "_set_memballoon", drop_balloon)
    assert store.key(template, build_at(tmp_path / "a"), 1, 256, 4096) != key


def test_seed_is_found_only_when_complete_and_pruned_only_when_unused(tmp_path):
    store = SeedStore(tmp_path, "qemu", lambda: "7.2.0")
    build = build_at(tmp_path / "image")
    key = store.key(TEMPLATE, build, 1, 256, 4096)
    staging = store.building_dir(key)
    staging.mkdir(parents=True)
    (staging / "disk.qcow2").write_bytes(b"qcow")
    (staging / "state.sav").write_bytes(b"state")
    assert store.find(TEMPLATE, build, 1, 256, 4096) is None  # still building
    seed = store.publish(key, staging, TEMPLATE, 1, 256, 4096, str(build.path))
    assert store.find(TEMPLATE, build, 1, 256, 4096) == seed and not staging.exists()
    assert (seed.disk.stat().st_mode & 0o222) == 0  # read-only: clones are backed by it
    assert store.prune(current_keys=set(), used_keys={key}) == []  # a VM still uses it
    assert store.prune(current_keys={key}, used_keys=set()) == []  # still current
    assert store.prune(current_keys=set(), used_keys=set()) == [key]
    assert store.all() == []


def test_shapes_parse_and_bad_ones_stop_the_service():
    assert parse_shapes("1x256, 2X512") == ((1, 256), (2, 512))
    assert parse_shapes("") == ()
    for bad in ("1x", "x256", "0x256", "1x64", "one"):
        with pytest.raises(ValueError):
            parse_shapes(bad)
    with pytest.raises(ConfigError, match="WARM_POOL_SHAPES"):
        load_settings({}, {"WARM_POOL_SHAPES": "2"})
    with pytest.raises(ConfigError, match="ENABLE_WARM_POOL"):
        load_settings({}, {"ENABLE_WARM_POOL": "maybe"})
    assert load_settings({}, {"ENABLE_WARM_POOL": "true"}).warm_pool_enabled


def drop_balloon(devices):
    devices.remove(devices.find("memballoon"))
