"""The VMs' network ports: persistent tap devices the manager creates and owns.

A VM's NIC is ``<interface type='ethernet'>`` with ``<target dev='<port>' managed='no'/>``
(:mod:`app.virt.domain_xml`): libvirt and QEMU use the tap as they find it. The manager creates
it detached and down, has libvirt instantiate the VM's nwfilter on it (a filter binding), and
only then attaches it to the guests' bridge and brings it up. So the filter's ~0.8 s of
ebtables/iptables work runs while the guest boots or resumes, and not a single frame passes
before the filter is in place. The port is named after the VM's domain (``rds-<short id>``;
``ip link``, ``bridge link`` and ``virsh nwfilter-binding-list`` show the same name) and
outlives stops and starts of the domain; deleting the VM deletes it.
"""
from __future__ import annotations

import logging
import subprocess

from app.errors import HypervisorError

log = logging.getLogger(__name__)
IP_TIMEOUT = 30.0
PORT_PREFIX = "rds-"


class Taps:
    """Runs ``ip`` for the VMs' taps (argv lists, timeouts, errors as
    :class:`HypervisorError`)."""

    def create(self, port: str, mac: str) -> None:
        """A persistent tap, detached and down. Its host-side MAC is the guest's with the
        first byte ``fe`` (as libvirt does), so it never becomes the bridge's lowest address.
        """
        _run(["tuntap", "add", "dev", port, "mode", "tap"])
        try:
            _run(["link", "set", "dev", port, "address", "fe" + mac[2:]])
        except HypervisorError:
            self.delete(port)
            raise
        log.debug("tap created port=%s", port)

    def attach(self, port: str, bridge: str) -> None:
        """Plug the tap into ``bridge`` and bring it up (call once its filter is in place)."""
        _run(["link", "set", "dev", port, "master", bridge, "up"])

    def exists(self, port: str) -> bool:
        return _run(["-o", "link", "show", "dev", port], allow_missing=True) != ""

    def delete(self, port: str) -> None:
        """Remove the tap; a missing one is fine."""
        _run(["link", "delete", "dev", port], allow_missing=True)

    def names(self) -> set[str]:
        """The taps of this service on the host (for the orphan sweep)."""
        names = set()
        for line in _run(["-o", "link", "show", "type", "tun"]).splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                name = parts[1].strip().split("@")[0]
                if name.startswith(PORT_PREFIX):
                    names.add(name)
        return names


def _run(args: list[str], allow_missing: bool = False) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True,
                              timeout=IP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise HypervisorError(f"ip {args[0]} timed out after {IP_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise HypervisorError(f"ip cannot run: {exc} (is iproute2 installed?)") from exc
    if done.returncode != 0:
        missing = "does not exist" in done.stderr or "Cannot find device" in done.stderr
        if allow_missing and missing:
            return ""
        raise HypervisorError(f"ip {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout
