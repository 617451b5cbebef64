"""Runs ``ipset`` for the per-VM egress sets described in :mod:`app.virt.egress`."""
from __future__ import annotations

import logging
import subprocess

from app.errors import HypervisorError
from app.virt.egress import STAGING_SUFFIX, allow_set, dns_set, egress_entries, restore_script

log = logging.getLogger(__name__)
IPSET_TIMEOUT = 30.0


class IpSets:
    """Runs ``ipset`` (argv lists, timeouts, errors as :class:`HypervisorError`)."""

    def apply(self, vm_name: str, allow_ips: tuple[str, ...], outbound_internet: bool,
              gateway_ip: str) -> None:
        """Create or replace the VM's sets for this policy (atomically for a running VM)."""
        cidrs, resolvers = egress_entries(allow_ips, outbound_internet, gateway_ip)
        _run(["restore"], restore_script(vm_name, cidrs, resolvers))
        log.debug("egress sets applied vm=%s entries=%s", vm_name, len(cidrs))

    def destroy(self, vm_name: str) -> None:
        """Remove the VM's sets; missing ones are fine. Call after the domain is gone (the
        kernel refuses to destroy a set its filter rules still reference)."""
        for name in (allow_set(vm_name), dns_set(vm_name)):
            for candidate in (name + STAGING_SUFFIX, name):
                try:
                    _run(["destroy", candidate])
                except HypervisorError as exc:
                    if "does not exist" not in exc.message:
                        raise

    def vm_names(self) -> set[str]:
        """Names of the VMs that have sets on this host (for the orphan sweep)."""
        names = set()
        for line in _run(["list", "-n"]).splitlines():
            for suffix in ("-allow", "-dns", "-allow" + STAGING_SUFFIX, "-dns" + STAGING_SUFFIX):
                if line.startswith("rds-") and line.endswith(suffix):
                    names.add(line[:-len(suffix)])
                    break
        return names


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
