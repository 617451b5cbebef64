"""VmPorts: each VM's network port — its own tap, filtered by its own nwfilter, on the bridge.

The order is what keeps a guest from ever sending an unfiltered frame: the tap is created
detached and down (:meth:`VmPorts.create`, before the domain starts), libvirt instantiates the
VM's filter on it through a filter binding, and only then is it plugged into the guests' bridge
(:meth:`VmPorts.connect`, which :class:`~app.services.vms.VmService` runs while the guest boots
or resumes). Tap and binding are named after the domain (see
:func:`~app.virt.domain_xml.port_name`), outlive stops and starts, and go with the VM.
"""
from __future__ import annotations

import logging
import typing as t

from app.config import Settings
from app.models import VmRecord
from app.services.undo import quietly
from app.virt.domain_xml import port_name
from app.virt.nwfilter_xml import build_binding_xml
from app.virt.taps import Taps

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)


class VmPorts:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, taps: Taps) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.taps = taps

    def create(self, record: VmRecord) -> None:
        """The VM's tap, detached and down: no frame passes until :meth:`connect`."""
        self.taps.create(port_name(record.name), record.mac)

    def connect(self, record: VmRecord) -> None:
        """Instantiate the VM's filter on its tap (named like the VM), then plug the tap into
        the bridge. Returns once both are done."""
        port = port_name(record.name)
        self.hypervisor.create_filter_binding(build_binding_xml(
            port, record.mac, record.name, record.name, record.id,
            {"IP": record.guest_ip, "GATEWAY": str(self.settings.gateway_ip)}))
        self.taps.attach(port, self.settings.network_bridge)

    def ensure(self, record: VmRecord) -> None:
        """Before a start: re-create tap and binding if they are gone (a host reboot), and plug
        the tap in again (a re-created bridge has lost it)."""
        port = port_name(record.name)
        if not self.taps.exists(port):
            self.taps.create(port, record.mac)
        if port in self.hypervisor.filter_binding_ports():
            self.taps.attach(port, self.settings.network_bridge)
        else:
            self.connect(record)

    def remove(self, vm_name: str) -> None:
        """Remove the VM's binding (and with it the filter's rules), then its tap; missing ones
        are fine."""
        self.remove_port(port_name(vm_name))

    def remove_port(self, port: str) -> None:
        self.hypervisor.delete_filter_binding(port)
        self.taps.delete(port)

    def present(self) -> tuple[set[str], set[str]]:
        """The ports that have a filter binding, and the taps, on this host now."""
        return set(self.hypervisor.filter_binding_ports()), self.taps.names()

    def sweep(self, keep: set[str], present: tuple[set[str], set[str]] | None = None
              ) -> list[str]:
        """Remove the bindings and taps of every VM name not in ``keep``; what was removed.

        :param present: what :meth:`present` said before ``keep`` was read (only those go: a
            port made since belongs to a create that ``keep`` may not know of yet).
        """
        ports = {port_name(name) for name in keep}
        bound, tapped = present if present is not None else self.present()
        bound, tapped = bound - ports, tapped - ports
        removed = []
        for port in sorted(bound | tapped):
            quietly(self.remove_port, port)
            removed += [f"{what} {port}" for what, where in (("nwfilter binding", bound),
                                                                ("tap", tapped)) if port in where]
        return removed
