"""Which accelerator libvirt should use: KVM where it really works, TCG otherwise."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cpu_has_virtualisation(cpuinfo: str) -> bool:
    """True when the CPU flags show hardware virtualisation (Intel VT-x or AMD-V)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            if flags & {"vmx", "svm"}:
                return True
    return False


def kvm_device_usable(path: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_domain_type(setting: str, cpuinfo_path: str = "/proc/cpuinfo",
                       kvm_path: str = "/dev/kvm") -> str:
    """libvirt domain type for ``setting`` (auto, kvm or tcg): ``"kvm"`` or ``"qemu"``.

    A /dev/kvm that opens is not enough: PVM hosts expose one that only runs PVM guests, so
    ``auto`` also requires the vmx/svm CPU flag.
    """
    if setting == "kvm":
        return "kvm"
    if setting == "tcg":
        return "qemu"
    try:
        cpuinfo = Path(cpuinfo_path).read_text()
    except OSError:
        cpuinfo = ""
    if cpu_has_virtualisation(cpuinfo) and kvm_device_usable(kvm_path):
        return "kvm"
    return "qemu"
