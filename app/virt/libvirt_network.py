"""nwfilter and network calls of :class:`app.virt.connection.Hypervisor` (a mixin)."""
from __future__ import annotations

import contextlib
import logging
import typing as t

import libvirt

from app.errors import FilterNotFound
from app.models import NAME_PREFIX
from app.virt.network_xml import DhcpHost, build_dhcp_host_xml, parse_dhcp_hosts

log = logging.getLogger(__name__)
# What libvirt says when an ADD matches an entry's mac, name or ip, and a DELETE matches none
# (VIR_ERR_OPERATION_INVALID both; libvirt 9.0, src/conf/network_conf.c).
_DUPLICATE_HOST = "there is an existing dhcp host entry"
_NO_SUCH_HOST = "couldn't locate a matching dhcp host entry"


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
                try:
                    net = conn.networkDefineXML(xml)
                    created = True
                except libvirt.libvirtError:
                    # Another client (a manager on another machine) defined it meanwhile.
                    net = conn.networkLookupByName(name)
            if net.isActive() and not bridge_present():
                log.warning("network %s is active but its bridge is gone: restarting it", name)
                net.destroy()
            if not net.isActive():
                try:
                    net.create()
                except libvirt.libvirtError:
                    if net.isActive():  # another client started it meanwhile
                        return created
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

    # DHCP host entries (a remote host's address reservations, issue 17) ####################

    def dhcp_hosts(self, network: str) -> list[DhcpHost]:
        """The network's DHCP host entries (its live definition when it runs)."""
        return self._call("network dhcp hosts", lambda conn: parse_dhcp_hosts(
            conn.networkLookupByName(network).XMLDesc(0)))

    def add_dhcp_host(self, network: str, host: DhcpHost) -> bool:
        """Add a DHCP host entry (``virNetworkUpdate`` ADD_LAST, live and persistent); False
        when libvirt refuses it because an entry has its MAC, name or address already.

        libvirt checks and adds under the network's lock, so of several clients adding the
        same address at once (on any number of connections) exactly one gets True.
        """
        xml = build_dhcp_host_xml(host)

        def add(conn: t.Any) -> bool:
            try:
                self._update_dhcp_host(conn.networkLookupByName(network),
                                       libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, xml)
            except libvirt.libvirtError as exc:
                if _DUPLICATE_HOST in (exc.get_error_message() or ""):
                    return False
                raise
            return True
        return self._call("add network dhcp host", add)

    def delete_dhcp_host(self, network: str, host: DhcpHost) -> None:
        """Remove the DHCP host entry matching ``host``; none (or no network) is fine."""
        xml = build_dhcp_host_xml(host)

        def delete(conn: t.Any) -> None:
            try:
                self._update_dhcp_host(conn.networkLookupByName(network),
                                       libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, xml)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK and \
                        _NO_SUCH_HOST not in (exc.get_error_message() or ""):
                    raise
        self._call("delete network dhcp host", delete)

    @staticmethod
    def _update_dhcp_host(net: t.Any, command: int, xml: str) -> None:
        log.debug("network dhcp host update network=%s command=%s xml=%s", net.name(), command,
                  xml)
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if net.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, flags)
