"""Runs ``ipset`` for the egress sets described in :mod:`app.virt.egress`."""
from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading
import time
import typing as t

from app.errors import HypervisorError
from app.virt.egress import (egress_entries, host_sets_script, never_ranges, owner_of,
                             restore_script, vm_set_names)

log = logging.getLogger(__name__)
IPSET_TIMEOUT = 30.0
IP_TIMEOUT = 10.0
HOST_SETS_MAX_AGE_S = 5.0  # a policy change re-reads the host's addresses at most this often


class IpSets:
    """Runs ``ipset`` (argv lists, timeouts, errors as :class:`HypervisorError`).

    :param never_extra: CIDRs no guest may reach besides link-local (``EGRESS_NEVER_CIDRS``).
    """

    def __init__(self, never_extra: t.Iterable[str] = ()) -> None:
        self.never = never_ranges(never_extra)
        self._host_lock = threading.Lock()
        self._host_refreshed = 0.0

    def apply(self, vm_name: str, allow_ips: tuple[str, ...], outbound_internet: bool,
              gateway_ip: str) -> None:
        """Create or replace the VM's sets for this policy (atomically for a running VM).
        The host-wide sets its filter also consults are refreshed first when stale."""
        self.refresh_host_sets(max_age_s=HOST_SETS_MAX_AGE_S)
        sets = egress_entries(allow_ips, outbound_internet, gateway_ip)
        _run(["restore"], restore_script(vm_name, sets))
        log.debug("egress sets applied vm=%s entries=%s pinned=%s", vm_name, len(sets.allowed),
                  len(sets.pinned))

    def refresh_host_sets(self, max_age_s: float = 0.0) -> None:
        """Fill the host-wide sets: the host's own addresses (they change: DHCP, new
        interfaces) and the never-reachable ranges. Every process may do it; each refresh
        swaps complete sets in."""
        with self._host_lock:
            if max_age_s and time.monotonic() - self._host_refreshed < max_age_s:
                return
            _run(["restore"], host_sets_script(host_addresses(), self.never))
            self._host_refreshed = time.monotonic()

    def destroy(self, vm_name: str) -> None:
        """Remove the VM's sets; missing ones are fine. Call after the domain is gone (the
        kernel refuses to destroy a set its filter rules still reference)."""
        for name in vm_set_names(vm_name):
            try:
                _run(["destroy", name])
            except HypervisorError as exc:
                if "does not exist" not in exc.message:
                    raise

    def vm_names(self) -> set[str]:
        """Names of the VMs that have sets on this host (for the orphan sweep)."""
        return {owner for owner in map(owner_of, _run(["list", "-n"]).splitlines()) if owner}

    def members(self, set_name: str) -> list[str]:
        """The members of one set (tests and operators)."""
        lines = _run(["list", set_name]).splitlines()
        start = lines.index("Members:") + 1 if "Members:" in lines else len(lines)
        return [line.strip() for line in lines[start:] if line.strip()]


def host_addresses() -> list[str]:
    """Every IPv4 address configured on this host, as ``/32`` networks."""
    try:
        done = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                              text=True, timeout=IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HypervisorError(f"cannot list the host's addresses: {exc}") from None
    if done.returncode != 0:
        raise HypervisorError(f"ip addr failed: {done.stderr.strip()}")
    return parse_addresses(done.stdout)


def parse_addresses(output: str) -> list[str]:
    """``ip -4 -o addr show`` output → ``["10.0.2.15/32", ...]`` (pure)."""
    found: list[str] = []
    for line in output.splitlines():
        words = line.split()
        if "inet" in words[:-1]:
            address = words[words.index("inet") + 1].split("/")[0]
            try:
                entry = f"{ipaddress.IPv4Address(address)}/32"
            except ValueError:
                continue
            if entry not in found:
                found.append(entry)
    return found


def _run(args: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(["ipset", *args], input=stdin, capture_output=True, text=True,
                              timeout=IPSET_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise HypervisorError(f"ipset {args[0]} timed out after {IPSET_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise HypervisorError(f"ipset cannot run: {exc} (is the ipset package "
                              f"installed?)") from exc
    if done.returncode != 0:
        raise HypervisorError(f"ipset {args[0]} failed: {done.stderr.strip()}")
    return done.stdout
