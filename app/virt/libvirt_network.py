"""nwfilter and network calls of :class:`app.virt.connection.Hypervisor` (a mixin)."""
from __future__ import annotations

import contextlib
import logging
import typing as t

import libvirt

from app.errors import FilterNotFound
from app.models import NAME_PREFIX

log = logging.getLogger(__name__)


class FilterAndNetworkCalls:
    """Define/undefine our nwfilters and their bindings; keep our libvirt network up.
    Needs the connection's ``_call`` and ``timeout``."""

    _call: t.Callable[..., t.Any]
    timeout: float

    def define_filter(self, xml: str) -> None:
        log.debug("defining nwfilter xml=%s", xml)
        self._call("define nwfilter", lambda conn: conn.nwfilterDefineXML(xml))

    def undefine_filter(self, name: str) -> None:
        """Remove a filter; one that does not exist is fine."""
        with contextlib.suppress(FilterNotFound):
            self._call("undefine nwfilter",
                       lambda conn: conn.nwfilterLookupByName(name).undefine())

    def create_filter_binding(self, xml: str) -> None:
        """Instantiate a filter on a tap (``virNWFilterBindingCreateXML``); returns once its
        ebtables/iptables rules are in place."""
        log.debug("creating nwfilter binding xml=%s", xml)
        self._call("create nwfilter binding", lambda conn: conn.nwfilterBindingCreateXML(xml, 0))

    def delete_filter_binding(self, port: str) -> None:
        """Remove the filter binding of ``port`` and its rules; none is fine."""
        def delete(conn: t.Any) -> None:
            try:
                binding = conn.nwfilterBindingLookupByPortDev(port)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER_BINDING:
                    return
                raise
            binding.delete()
        self._call("delete nwfilter binding", delete)

    def filter_binding_ports(self) -> list[str]:
        """The ports (taps) of this service that have a filter binding."""
        return self._call("list nwfilter bindings", lambda conn: [
            b.portDev() for b in conn.listAllNWFilterBindings(0)
            if b.portDev().startswith(NAME_PREFIX)])

    def list_filter_names(self) -> list[str]:
        return self._call("list nwfilters", lambda conn: [
            f.name() for f in conn.listAllNWFilters(0) if f.name().startswith(NAME_PREFIX)])

    def ensure_network(self, name: str, xml: str, bridge_present: t.Callable[[], bool],
                       remove_stale_bridge: t.Callable[[], None]) -> bool:
        """Define (if missing), start and autostart the network; True if it was created.

        A libvirtd that was killed can come back believing its network is active while the
        bridge is gone (then the network is restarted), or inactive while the bridge is still
        there (then the stale bridge is removed before starting it).
        """
        def ensure(conn: t.Any) -> bool:
            created = False
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError:
                net = conn.networkDefineXML(xml)
                created = True
            if net.isActive() and not bridge_present():
                log.warning("network %s is active but its bridge is gone: restarting it", name)
                net.destroy()
            if not net.isActive():
                try:
                    net.create()
                except libvirt.libvirtError:
                    if not bridge_present():
                        raise
                    log.warning("removing a stale bridge left behind for network %s", name)
                    remove_stale_bridge()
                    net.create()
            if not net.autostart():
                net.setAutostart(True)
            return created
        return self._call("ensure network", ensure, timeout=max(self.timeout, 60))

    def network_is_active(self, name: str) -> bool:
        def active(conn: t.Any) -> bool:
            try:
                return bool(conn.networkLookupByName(name).isActive())
            except libvirt.libvirtError:
                return False
        return self._call("network state", active)
