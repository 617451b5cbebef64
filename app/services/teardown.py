"""One teardown path: what a VM owns, how each part is removed, and in which order.

A VM owns, made in this order: its files (``vms/<name>/``: overlay disk, keys, sockets), its
egress ipsets, its nwfilter, its network port (tap and filter binding) and its domain. They go
always in the same order: the domain is powered off first (a running guest must keep its
filter), then port, filter, ipsets, files (a filter is only removable once no binding uses it,
a set once no rule does), and the domain is undefined last, so that its name and address stay
taken until nothing of the VM is left. The same step functions serve

- a create that fails half-way (each step registers its undo in a :class:`Cleanup` as it
  succeeds, like e2b's orchestrator),
- a delete, the warm pool and the seed builder (:meth:`VmTeardown.remove`),
- and the orphan sweep (the steps one by one, for whatever is left of a VM without a domain).

Every step accepts that its part is already gone.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import typing as t

from app.config import Settings
from app.errors import AppError, VmNotFound
from app.models import VmRecord
from app.services.guests import GuestClients
from app.services.ports import VmPorts
from app.virt.ipsets import IpSets

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
FILES_ATTEMPTS = 3


class Cleanup:
    """Undo steps registered while something is built, run in reverse if the build fails.

    ``with Cleanup("create rds-0b5c1a3e") as cleanup: ...; cleanup.add("files", fn, path)``;
    when the block raises, every step runs (newest first; a failing step is logged and the
    others still run) and the error propagates. :meth:`keep` at the end of a successful build
    drops the steps; :meth:`run` runs them on demand (for work that is always undone).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._steps: list[tuple[str, t.Callable[..., t.Any], tuple[t.Any, ...]]] = []

    def add(self, name: str, step: t.Callable[..., t.Any], *args: t.Any) -> None:
        self._steps.append((name, step, args))

    def keep(self) -> None:
        self._steps.clear()

    def run(self) -> None:
        while self._steps:
            name, step, args = self._steps.pop()
            try:
                step(*args)
            except Exception as exc:  # noqa: BLE001 - the other steps must still run
                log.warning("undo failed what=%s step=%s error=%s", self.what, name, exc)

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, exc_type: t.Any, _exc: t.Any, _tb: t.Any) -> None:
        if exc_type is not None:
            self.run()


class VmTeardown:
    """The per-part removal steps of a VM, and all of them in order."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor, ports: VmPorts,
                 ipsets: IpSets, guests: GuestClients,
                 forget: t.Callable[[str], None] | None = None) -> None:
        """:param forget: drops what the service keeps about a VM elsewhere (its exec
            history), by VM id; must not raise."""
        self.forget = forget
        self.settings = settings
        self.hypervisor = hypervisor
        self.ports = ports
        self.ipsets = ipsets
        self.guests = guests

    # Steps (each: gone already is fine) ###################################################

    def power_off(self, vm_id: str) -> None:
        """Power the domain off at once (its SSH client goes first)."""
        self.guests.forget(vm_id)
        # Gone already (undefined by someone else, e.g. virsh): the goal is reached.
        with contextlib.suppress(VmNotFound):
            self.hypervisor.destroy_domain(vm_id)

    def undefine(self, vm_id: str) -> None:
        with contextlib.suppress(VmNotFound):
            self.hypervisor.undefine_domain(vm_id)

    def domain(self, vm_id: str) -> None:
        """Power the domain off and undefine it."""
        self.power_off(vm_id)
        self.undefine(vm_id)

    def port(self, name: str) -> None:
        """The filter binding (and with it the filter's rules), then the tap."""
        self.ports.remove(name)

    def filter(self, name: str) -> None:
        self.hypervisor.undefine_filter(name)

    def egress_sets(self, name: str) -> None:
        self.ipsets.destroy(name)

    def files(self, name: str) -> None:
        """The VM's directory. Another process finishing the same delete (the reaper) may
        create the VM's lock file in it between the removal of its files and of the
        directory itself (the lock is taken by opening that file): the removal runs again
        then, or an empty directory would be left behind (seen in `make density`)."""
        directory = self.settings.vms_dir / name
        for _ in range(FILES_ATTEMPTS):
            shutil.rmtree(directory, ignore_errors=True)
            if not directory.exists():
                return
        log.warning("the directory of vm %s could not be removed: %s", name, directory)

    # Everything ###########################################################################

    def remove(self, record: VmRecord) -> None:
        """Remove the VM and everything it owns, in the one order. When the domain cannot be
        powered off nothing else is touched; after that, every step runs even when an
        earlier one failed, then the first error is raised.

        :raises AppError: the first step that failed (e.g. libvirt unreachable).
        """
        self.power_off(record.id)
        self.finish(record)

    def finish(self, record: VmRecord) -> None:
        """Everything after the power-off: port, filter, ipsets, files, then the domain's
        definition (see :meth:`remove`)."""
        first_error: AppError | None = None
        for name, step, arg in (("port", self.port, record.name),
                                ("filter", self.filter, record.name),
                                ("ipsets", self.egress_sets, record.name),
                                ("files", self.files, record.name),
                                ("domain", self.undefine, record.id)):
            try:
                step(arg)
            except AppError as exc:
                log.warning("removing %s of vm=%s failed: %s", name, record.id, exc.message)
                first_error = first_error or exc
        if self.forget is not None:
            self.forget(record.id)
        if first_error is not None:
            raise first_error
        log.info("vm deleted vm=%s name=%s role=%s", record.id, record.name, record.role.value)
