"""Snapshot disk helpers on real (tiny) qcow2 files, and the image builder's prune rule."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from app.config import REPO_ROOT
from app.errors import HypervisorError
from app.virt import disks

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None or
                                    shutil.which("qemu-io") is None,
                                    reason="qemu-img/qemu-io not installed")


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True,
                   capture_output=True, timeout=30)


def same_content(left: Path, right: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(left),
                           str(right)], capture_output=True, timeout=30).returncode == 0


@needs_qemu_img
def test_copy_rebased_onto_the_template_drops_the_intermediate(tmp_path):
    template, middle, top = tmp_path / "template.qcow2", tmp_path / "mid.qcow2", tmp_path / "top"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(template), "16M"],
                   check=True, timeout=30)
    qemu_io(template, "write -P 0x11 0 4M")
    disks.create_overlay(template, middle, 16)
    qemu_io(middle, "write -P 0x22 1M 2M")  # only in the intermediate file
    disks.create_overlay(middle, top, 16)
    qemu_io(top, "write -P 0x33 2M 64k")

    copy = tmp_path / "copy.qcow2"
    disks.copy_image(top, copy)
    assert disks.backing_file(copy) == middle
    disks.rebase(copy, template)
    disks.check(copy)
    assert disks.backing_file(copy) == template
    middle.unlink()  # the snapshot must not need it any more
    reference = tmp_path / "reference.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(reference), "16M"],
                   check=True, timeout=30)
    for command in ("write -P 0x11 0 4M", "write -P 0x22 1M 2M", "write -P 0x33 2M 64k"):
        qemu_io(reference, command)
    assert same_content(copy, reference)


@needs_qemu_img
def test_a_copy_from_another_host_is_rebased_unsafely_onto_the_same_image_here(tmp_path):
    """A remote VM's disk: its backing file is a path on its host (missing here); its header
    is checked, then only the name is rewritten to the byte-identical local image."""
    from app.virt.disk_formats import UnsafeImage, check_overlay_info

    there = tmp_path / "there" / "default.qcow2"
    there.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(there), "16M"],
                   check=True, timeout=30)
    qemu_io(there, "write -P 0x11 0 4M")
    overlay = tmp_path / "there" / "rds-1.qcow2"
    disks.create_overlay(there, overlay, 16)
    qemu_io(overlay, "write -P 0x33 2M 64k")
    here = tmp_path / "here.qcow2"
    shutil.copyfile(there, here)
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(overlay, copy)
    reference = tmp_path / "reference.qcow2"
    shutil.copyfile(here, reference)
    qemu_io(reference, "write -P 0x33 2M 64k")
    shutil.rmtree(tmp_path / "there")  # on another host: not readable here

    info = disks.info(copy, "qcow2")
    check_overlay_info(info, str(there))
    with pytest.raises(UnsafeImage, match="backing file is"):
        check_overlay_info(info, "/elsewhere/default.qcow2")
    disks.rebase(copy, here, unsafe=True)
    disks.check(copy)
    assert disks.backing_file(copy) == here
    assert same_content(copy, reference)


@needs_qemu_img
def test_check_reports_a_broken_image(tmp_path):
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb" + b"\0" * 1000)
    with pytest.raises(HypervisorError, match="qemu-img check failed"):
        disks.check(broken)


def test_copy_of_a_missing_file_fails_cleanly(tmp_path):
    with pytest.raises(HypervisorError, match="cp failed"):
        disks.copy_image(tmp_path / "missing.qcow2", tmp_path / "copy.qcow2")


# Image builds #############################################################################

def test_builds_named_by_snapshots_are_in_use(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "build_image", REPO_ROOT / "guest" / "build" / "build_image.py")
    build_image = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_image)
    build = tmp_path / "images" / "debian-bookworm" / "0ld0ld0ld0ld0ld0"
    build.mkdir(parents=True)
    snapshot = tmp_path / "snapshots" / "5a1e0c2d-7b3f-4e6a-9c8d-0f1e2d3c4b5a"
    snapshot.mkdir(parents=True)
    (snapshot / "snapshot.json").write_text(json.dumps({"imagePath": str(build / "disk.qcow2")}))
    broken = tmp_path / "snapshots" / "broken"
    broken.mkdir()
    (broken / "snapshot.json").write_text("{")
    assert build_image.builds_in_use(tmp_path) == {build.resolve()}


def test_a_full_filesystem_is_507_not_a_hypervisor_error(tmp_path, monkeypatch):
    """qemu-img writing onto a full storage filesystem (its words, as seen with the storage
    root full): the caller is told the host is out of room (507), not that the hypervisor
    failed (503 with a host path in it)."""
    from app.errors import InsufficientStorage

    def full(argv, **_kwargs):
        return subprocess.CompletedProcess(argv, 1, "", f"qemu-img: {argv[-2]}: Could not "
                                           f"write qcow2 header: No space left on device\n")

    monkeypatch.setattr(disks.subprocess, "run", full)
    with pytest.raises(InsufficientStorage, match=r"storage is full \(No space left") as caught:
        disks.create_overlay(tmp_path / "base.qcow2", tmp_path / "disk.qcow2", 64)
    assert str(tmp_path) not in caught.value.message
