"""Uploaded disks: the format is read from the header, never guessed by qemu-img, and a disk
naming another file (backing file, external data file) is refused; with real qemu-img files
where qemu-img is installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.errors import InvalidRequest
from app.services.image_store import BuildLog, read_tail
from app.services.image_uploads import accept_disk
from app.virt import disk_formats, disks
from app.virt.disk_formats import UnsafeImage, check_info, detect_format
from tests.unit.fakes import unit_settings

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img not installed")


def qemu_img(*args: str) -> None:
    # A LUKS create times its key derivation first, and on a busy host qemu-img may fail that
    # ("Unable to get accurate CPU usage"): such a create is tried again.
    for attempt in range(5):
        done = subprocess.run(["qemu-img", *args], capture_output=True, timeout=30)
        if done.returncode == 0:
            return
        if b"accurate CPU usage" not in done.stderr or attempt == 4:
            done.check_returncode()


def header(path: Path) -> bytes:
    return path.read_bytes()[:disk_formats.HEADER_BYTES]


@needs_qemu_img
@pytest.mark.parametrize(("options", "words"), [
    (["-b", "{base}", "-F", "qcow2"], ["backing file"]),
    (["-o", "data_file={dir}/data.raw"], ["external"]),
    (["-o", "encrypt.format=luks,encrypt.key-secret=s", "--object", "secret,id=s,data=x"],
     ["encrypted"]),
])
def test_real_qcow2_files_that_name_other_files_are_refused(tmp_path, options, words):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2",
             *[o.format(base=base, dir=tmp_path) for o in options], str(image), "16M")
    with pytest.raises(UnsafeImage) as refused:
        detect_format(header(image))
    for word in words:
        assert word in str(refused.value)


@needs_qemu_img
@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_real_standalone_qcow2_passes_and_qemu_img_agrees(tmp_path, compat):
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", str(image), "16M")
    assert detect_format(header(image)) == "qcow2"
    assert check_info(disks.info(image, "qcow2"), "qcow2", 1 << 30) == 16 << 20


@needs_qemu_img
def test_a_raw_file_is_never_read_as_qcow2(tmp_path):
    """The classic: a "raw" disk whose first bytes are a qcow2 header naming /etc/shadow.
    Detected as qcow2 (and refused), never passed to qemu-img as something to probe."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    evil = tmp_path / "evil.img"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(evil))
    with pytest.raises(UnsafeImage, match="backing file"):
        detect_format(header(evil))
    # ...and as raw, qemu-img sees no backing file at all.
    info = disks.info(evil, "raw")
    assert info["format"] == "raw" and "backing-filename" not in info


@needs_qemu_img
def test_accept_disk_with_real_qemu_img(tmp_path):
    settings = unit_settings(tmp_path, MAX_DISK_SIZE_MB=64)
    raw = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "8M", str(raw)], check=True)
    if shutil.which("mkfs.ext4"):
        subprocess.run(["mkfs.ext4", "-q", "-F", str(raw)], check=True, capture_output=True)
    else:
        data = bytearray(raw.read_bytes())
        data[1080:1082] = b"\x53\xef"
        raw.write_bytes(bytes(data))
    with open(raw, "rb") as body:
        checked, image_format, size_mb = accept_disk(settings, body, tmp_path / "upload.img")
    assert (image_format, size_mb) == ("raw", 8) and checked.read_bytes() == raw.read_bytes()
    checked.unlink()
    big = tmp_path / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(big), "128M")
    with open(big, "rb") as body, pytest.raises(InvalidRequest, match="MAX_DISK_SIZE_MB"):
        accept_disk(settings, body, tmp_path / "upload2.img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.qcow2", "fs.img"]


@pytest.mark.parametrize(("data", "words"), [
    (b"QFI\xfb\0\0\0\x01" + b"\0" * 200, ["version 1"]),
    (b"QFI\xfb" + b"\0" * 10, ["cut short"]),
    (b"vhdxfile" + b"\0" * 2000, ["vhdx"]),
    (b"QED\0" + b"\0" * 2000, ["qed"]),
    (b"LUKS\xba\xbe" + b"\0" * 2000, ["luks"]),
    (b"\0" * 0x40 + b"\x7f\x10\xda\xbe" + b"\0" * 2000, ["vdi"]),
    (b"\x55\xaa" * 1000, ["ext4"]),
])
def test_headers_of_other_formats_are_refused(data, words):
    with pytest.raises(UnsafeImage) as refused:
        detect_format(data)
    for word in words:
        assert word in str(refused.value)


def test_extensions_running_past_the_header_are_refused():
    import struct
    head = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 3, 0, 0, 16, 1 << 20, 0, 0, 0, 0, 0, 0, 0)
    head += struct.pack(">QQQII", 0, 0, 0, 4, 104) + struct.pack(">II", 0x6803F857, 10**6)
    with pytest.raises(UnsafeImage, match="past the first cluster"):
        detect_format(head)


@pytest.mark.parametrize(("info", "words"), [
    ({"format": "qcow2"}, ["qemu-img reads"]),
    ({"format": "raw", "backing-filename": "/x"}, ["backing"]),
    ({"format": "raw", "format-specific": {"data": {"data-file": "x"}}}, ["data file"]),
    ({"format": "raw", "encrypted": True}, ["encrypted"]),
    ({"format": "raw", "virtual-size": 0}, ["empty"]),
])
def test_qemu_img_second_opinion(info, words):
    with pytest.raises(UnsafeImage) as refused:
        check_info(info, "raw", 1 << 30)
    for word in words:
        assert word in str(refused.value)


def test_build_log_drops_its_oldest_half_and_tails_read_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr("app.services.image_store.MAX_LOG_BYTES", 1000)
    log = BuildLog(tmp_path / "build.log")
    log.line("started")
    for number in range(200):
        log.write(f"line {number}\n".encode())
    log.write(b"no newline yet")
    log.line("READY")
    text = (tmp_path / "build.log").read_text()
    assert len(text) <= 1100 and "earlier output dropped" in text
    lines, truncated = read_tail(tmp_path / "build.log", 3)
    assert lines == ["line 199", "no newline yet", "==> READY"] and truncated
    assert read_tail(tmp_path / "missing.log", 3) == ([], False)


# A remote VM's disk copied here (a snapshot of it) ##########################################

BACKING = "/var/lib/libvirt/images/rds-images/default.qcow2"
OVERLAY = {"format": "qcow2", "virtual-size": 1 << 30, "backing-filename": BACKING,
           "backing-filename-format": "qcow2",
           "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}


def test_an_overlay_of_the_expected_backing_passes():
    disk_formats.check_overlay_info(OVERLAY, BACKING)


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "raw"}, "not qcow2"),
    ({"backing-filename": "/etc/shadow"}, "backing file is '/etc/shadow'"),
    ({"backing-filename": None}, "backing file is None"),
    ({"backing-filename-format": "raw"}, "backing file format is 'raw'"),
    ({"format-specific": {"data": {"data-file": "/etc/passwd"}}}, "external data file"),
    ({"encrypted": True}, "encrypted"),
])
def test_an_overlay_naming_anything_else_is_refused(change, message):
    with pytest.raises(UnsafeImage, match=message):
        disk_formats.check_overlay_info({**OVERLAY, **change}, BACKING)
