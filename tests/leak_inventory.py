"""What this service leaves on the host, read with the host's own tools (virsh, ipset, ip, the
file system) rather than the service's code, so a bug in that code cannot hide its own leak.

The suite's final check (tests/conftest.py) takes an inventory when the session starts and one
when it ends: anything in the second that was not in the first is a leak and fails the run. On
CI the first is empty (``.ci/run`` purges leftovers first), so there the check is absolute.

There is no DHCP on the guest network: a guest's address lives only in its domain's metadata,
so "no domain left" is also "no address held".
"""
from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

NAME_PREFIX = "rds-"
BRIDGE = os.environ.get("NETWORK_BRIDGE", "rds-br0")
STORAGE_ROOT = Path(os.environ.get("STORAGE_ROOT", "/var/lib/run-dat-sheesh"))
LIBVIRT_SAVE_DIR = Path("/var/lib/libvirt/qemu/save")
# Host-wide sets made once by host-setup (not per VM).
FIXED_IPSETS = frozenset({"rds-host-addrs", "rds-never"})


def _lines(*command: str) -> list[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _virsh(*args: str) -> list[str]:
    return _lines("virsh", "-c", "qemu:///system", "-q", *args)


def _entries(directory: Path, skip: frozenset[str] = frozenset()) -> set[str]:
    if not directory.is_dir():
        return set()
    return {str(path) for path in directory.iterdir()
            if path.name not in skip and not path.name.startswith(".")}


def inventory() -> dict[str, set[str]]:
    """Everything of this service on the host, by kind. Memory-snapshot seeds and images
    built into the default image directory are the cache, not leaks, and are not listed."""
    return {
        "domains": {name for name in _virsh("list", "--all", "--name")
                    if name.startswith(NAME_PREFIX)},
        "nwfilters": {line.split()[1] for line in _virsh("nwfilter-list")
                      if len(line.split()) > 1 and line.split()[1].startswith(NAME_PREFIX)},
        "nwfilter bindings": {line.split()[0] for line in _virsh("nwfilter-binding-list")
                              if line.split()[0].startswith(NAME_PREFIX)},
        "ipsets": {name for name in _lines("ipset", "list", "-n")
                   if name.startswith(NAME_PREFIX) and name not in FIXED_IPSETS},
        "taps (and veths)": {line.split(":")[1].strip().split("@")[0]
                 for line in _lines("ip", "-o", "link", "show")
                 if line.split(":")[1].strip().startswith(NAME_PREFIX)
                 and line.split(":")[1].strip() != BRIDGE},
        "vm directories (overlays, consoles)": _entries(STORAGE_ROOT / "vms"),
        "snapshots (disk and memory save images)": _entries(STORAGE_ROOT / "snapshots"),
        "libvirt save images": {str(path) for path in LIBVIRT_SAVE_DIR.glob(NAME_PREFIX + "*")}
        if LIBVIRT_SAVE_DIR.is_dir() else set(),
        "custom images": _entries(STORAGE_ROOT / "images" / "custom", frozenset({"build.lock"})),
        "image volumes": _entries(STORAGE_ROOT / "images" / "volumes",
                                  frozenset({"default.qcow2"})),
        # The two-host rig's (tests/integration/two_host_rig.py); its veth is among "taps".
        "network namespaces": {line.split()[0] for line in _lines("ip", "netns", "list")
                               if line.startswith(NAME_PREFIX)},
        "rig state": _entries(Path("/var/lib/rds-rig")),
    }


def remote_inventory(uri: str) -> dict[str, set[str]]:
    """What the service made on a remote host (issue 17), read with ``virsh -c uri``: its
    domains, nwfilters, the VMs' volumes (the ``rds-vms`` pool; shipped images in
    ``rds-images`` and the guest network are the host's cache, not leaks) and the address
    reservations (DHCP host entries) in its guest networks, as ``network name ip``."""
    def virsh(*args: str) -> list[str]:
        return _lines("virsh", "-c", uri, "-q", *args)
    pools = set(virsh("pool-list", "--all", "--name"))
    if "rds-vms" in pools:
        virsh("pool-refresh", "rds-vms")  # files made there since (a console log)
    reservations = set()
    for network in virsh("net-list", "--all", "--name"):
        if network.startswith(NAME_PREFIX):
            xml = "\n".join(virsh("net-dumpxml", "--inactive", network))
            reservations |= {f"{network} {host.get('name')} {host.get('ip')}"
                             for host in ET.fromstring(xml).findall("ip/dhcp/host")}
    return {
        "address reservations": reservations,
        "domains": {name for name in virsh("list", "--all", "--name")
                    if name.startswith(NAME_PREFIX)},
        "nwfilters": {line.split()[1] for line in virsh("nwfilter-list")
                      if len(line.split()) > 1 and line.split()[1].startswith(NAME_PREFIX)},
        "vm volumes": {line.split()[0] for line in virsh("vol-list", "rds-vms")}
        if "rds-vms" in pools else set(),
    }


def new_since(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    """What ``after`` holds that ``before`` did not, by kind (kinds with nothing new left out)."""
    return {kind: items - before.get(kind, set()) for kind, items in after.items()
            if items - before.get(kind, set())}


def leaks(before: dict[str, set[str]], settle_s: float = 90) -> dict[str, set[str]]:
    """New leftovers since ``before``, after giving background cleanups (asynchronous
    deletes, a reaper's last round) up to ``settle_s`` seconds to finish."""
    deadline = time.monotonic() + settle_s
    while True:
        found = new_since(before, inventory())
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def report(found: dict[str, set[str]]) -> str:
    return "\n".join(f"  {kind}: {', '.join(sorted(items))}" for kind, items in found.items())


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers (children) of a live server's master."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return [int(pid) for pid in children.read_text().split()]
    except OSError:
        return []


def open_fds(pid: int) -> list[str]:
    """What each of a process's file descriptors points at (``socket:[…]``, a path …)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return targets
    for entry in entries:
        try:
            targets.append(os.readlink(entry))
        except OSError:
            continue  # closed while we looked
    return sorted(targets)


def countable_fds(pid: int) -> list[str]:
    """:func:`open_fds` without the store's: each request thread keeps its own SQLite
    connection (database and WAL), so their number follows the threads that have served,
    up to the worker's thread count, not the calls made."""
    return [target for target in open_fds(pid)
            if not target.startswith(str(STORAGE_ROOT / "state.db"))]

