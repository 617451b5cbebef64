"""Hypervisor: the libvirt connection (with its mixins, the only code that imports libvirt).

Every call runs on a helper thread with a deadline, because libvirt-python calls block without
a timeout of their own: a hung libvirtd becomes :class:`HypervisorError` (503) instead of a
stuck worker. libvirt errors are translated here, once: no such domain → :class:`VmNotFound`,
anything else → :class:`HypervisorError`.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import threading
import time
import typing as t

import libvirt

from app import metrics
from app.errors import FilterNotFound, HypervisorError, VmNotFound
from app.models import NAME_PREFIX, DomainInfo
from app.virt.domain_cache import DomainCache
from app.virt.libvirt_events import start_event_loop, watch
from app.virt.libvirt_agent import GuestAgentCalls
from app.virt.libvirt_channel import ChannelCalls
from app.virt.libvirt_network import FilterAndNetworkCalls
from app.virt.libvirt_node import NodeCalls
from app.virt.libvirt_storage import StoragePoolCalls
from app.virt.metadata_xml import METADATA_NS

log = logging.getLogger(__name__)

DOMAIN_PREFIX = NAME_PREFIX

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}

# After a connection was lost, how long a new one is tried for: libvirtd restarting (an upgrade,
# deploy/libvirt-daemons.sh restart) is unreachable for a few seconds, and a call made then, such
# as the undo of a create it interrupted, should wait for it rather than fail and leave its
# half-made VM to the sweep. Outside that window a dead libvirtd fails calls at once (503).
RECONNECT_WINDOW_S = 15.0
RECONNECT_INTERVAL_S = 0.25

def _silence_default_handler(_ctx: t.Any, _err: t.Any) -> None:
    """libvirt prints every error to stderr by default; we log ours where we handle them."""


libvirt.registerErrorHandler(_silence_default_handler, None)


def _never_sent(exc: libvirt.libvirtError) -> bool:
    """The RPC layer failed before the request was written: the socket was already closed
    ("client socket is closed") or the write itself failed ("Cannot write data")."""
    if exc.get_error_domain() != libvirt.VIR_FROM_RPC:
        return False
    message = exc.get_error_message() or ""
    return "client socket is closed" in message or "Cannot write data" in message


class Hypervisor(NodeCalls, GuestAgentCalls, ChannelCalls, FilterAndNetworkCalls,
                 StoragePoolCalls):
    """A libvirt connection with timeouts; one per worker process, reopened when it dies.

    :param uri: libvirt URI, e.g. ``qemu:///system``.
    :param timeout: seconds any single libvirt call may take.
    :param keepalive: libvirt keepalive (interval s, missed answers) after which a silent
        connection is closed; a remote host's is shorter (app.services.host_registry).
    :param reconnect_window_s: how long after a lost connection a new one is retried for.
    :param drop_late_calls: a call whose caller timed out while it was still queued (behind a
        hung call) is never run; else it runs when its turn comes (the local host's: a
        timed-out undo still happens once libvirtd answers again).
    """

    def __init__(self, uri: str, timeout: float, keepalive: tuple[int, int] = (5, 3),
                 reconnect_window_s: float | None = None,
                 drop_late_calls: bool = False) -> None:
        self.uri = uri
        self.timeout = timeout
        self.keepalive = keepalive
        self.reconnect_window_s = (RECONNECT_WINDOW_S if reconnect_window_s is None
                                   else reconnect_window_s)
        self.drop_late_calls = drop_late_calls
        self._conn: t.Any = None
        self._lost_at: float | None = None  # when a live connection was last lost
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                           thread_name_prefix="libvirt")
        self.domains = DomainCache()
        atexit.register(self.close)

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._drop(conn)

    # Plumbing ##############################################################################

    def _drop(self, conn: t.Any) -> None:
        """Forget ``conn`` (if it is still the current connection) and close it."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self.domains.stop()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _connection(self) -> t.Any:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection lost, reconnecting uri=%s", self.uri)
                self._conn = None
                self.domains.stop()
                self._lost_at = time.monotonic()
            start_event_loop()
            conn = self._open()
            try:
                conn.setKeepAlive(*self.keepalive)
            except libvirt.libvirtError as exc:  # a driver without RPC (test:///)
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            watch(conn, self.domains)
            self._conn = conn
            return conn

    def _open(self) -> t.Any:
        """``libvirt.open``; within :data:`RECONNECT_WINDOW_S` of a lost connection, retried
        until libvirtd answers again (it is restarting). Called with ``_lock`` held."""
        while True:
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                lost = self._lost_at
                if lost is None or time.monotonic() - lost > self.reconnect_window_s:
                    raise
                log.info("libvirt not reachable yet, retrying: %s", exc.get_error_message())
                time.sleep(RECONNECT_INTERVAL_S)
                continue
            if self._lost_at is not None:
                log.warning("libvirt connection re-established after %.1fs uri=%s",
                            time.monotonic() - self._lost_at, self.uri)
                self._lost_at = None
            return conn

    def _call(self, what: str, fn: t.Callable[..., t.Any], *args: t.Any,
              timeout: float | None = None) -> t.Any:
        future = self.domains.around(what, lambda: self._pool.submit(self._run, fn, *args))
        try:
            return future.result(timeout=timeout or self.timeout)
        except concurrent.futures.TimeoutError:
            if self.drop_late_calls:
                future.cancel()  # still queued behind a hung call: the caller gave up
            metrics.LIBVIRT_ERRORS.labels(what).inc()
            raise HypervisorError(f"libvirt did not answer {what} within "
                                  f"{timeout or self.timeout:.0f}s") from None
        except HypervisorError:
            metrics.LIBVIRT_ERRORS.labels(what).inc()
            raise

    def _run(self, fn: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
        try:
            conn = self._connection()
            try:
                return fn(conn, *args)
            except libvirt.libvirtError as exc:
                if not _never_sent(exc):
                    raise
                # libvirtd closed the connection (restart, keepalive) and the call never left
                # this process: safe to send again on a new connection, once.
                log.warning("libvirt connection was closed, retrying on a new one: %s",
                            exc.get_error_message())
                self._drop(conn)
                self._lost_at = time.monotonic()
                return fn(self._connection(), *args)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmNotFound(exc.get_error_message() or "no such domain") from exc
            if code == libvirt.VIR_ERR_NO_NWFILTER:
                raise FilterNotFound(exc.get_error_message() or "no such nwfilter") from exc
            raise HypervisorError(f"libvirt: {exc.get_error_message() or exc}") from exc

    # Domain queries ########################################################################

    def list_domains(self) -> list[DomainInfo]:
        """All domains whose name starts with ``rds-``, with state and XML."""
        def collect(conn: t.Any) -> list[DomainInfo]:
            found = []
            for dom in conn.listAllDomains(0):
                try:
                    if not dom.name().startswith(DOMAIN_PREFIX):
                        continue
                    found.append(_info(dom))
                except libvirt.libvirtError:
                    continue  # undefined while we looked: it simply is not there
            return found
        return self._call("list domains", collect)

    def get_domain(self, uuid: str) -> DomainInfo:
        """:raises VmNotFound: when no domain has this UUID."""
        return self._call("get domain", lambda conn: _info(conn.lookupByUUIDString(uuid)))

    def get_domain_cached(self, uuid: str) -> DomainInfo:
        """:meth:`get_domain`, answered from what was read before when libvirt has said
        nothing about the domain since (:class:`~app.virt.domain_cache.DomainCache`).

        :raises VmNotFound: when no domain has this UUID (never kept).
        """
        found = self.domains.get(uuid)
        if found is not None:
            return found
        generation = self.domains.generation
        info = self.get_domain(uuid)
        self.domains.put(uuid, info, generation)
        return info

    def domain_name_exists(self, name: str) -> bool:
        def exists(conn: t.Any) -> bool:
            try:
                conn.lookupByName(name)
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
        return self._call("lookup domain", exists)

    def domain_stats(self, uuid: str) -> dict[str, t.Any]:
        """libvirt's bulk stats of one domain (``virConnectGetAllDomainStats`` keys such as
        ``cpu.time``, ``balloon.rss``, ``block.0.rd.bytes``, ``net.0.rx.bytes``).

        :raises VmNotFound: when no domain has this UUID.
        """
        def collect(conn: t.Any) -> dict[str, t.Any]:
            dom = conn.lookupByUUIDString(uuid)
            kinds = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                     | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
                     | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
            found = conn.domainListGetStats([dom], kinds, 0)
            return dict(found[0][1]) if found else {}
        return self._call("domain stats", collect)

    # Domain lifecycle ######################################################################

    def define_domain(self, xml: str) -> None:
        log.debug("defining domain xml=%s", xml)
        self._call("define domain", lambda conn: conn.defineXML(xml))

    def start_domain(self, uuid: str) -> None:
        self._call("start domain", lambda conn: conn.lookupByUUIDString(uuid).create())

    def destroy_domain(self, uuid: str) -> None:
        """Hard power-off; a domain that is not running is left as it is."""
        def destroy(conn: t.Any, flags: int) -> None:
            dom = conn.lookupByUUIDString(uuid)
            if not dom.isActive():
                return
            try:
                dom.destroyFlags(flags)
            except libvirt.libvirtError as exc:
                # It stopped between the two calls (QEMU died, or a libvirtd that restarted
                # cleaned up a restore it interrupted): off is what was asked for.
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or \
                        dom.isActive():
                    raise
        try:
            self._call("destroy domain", destroy, libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        except HypervisorError:
            # GRACEFUL gives up when qemu does not exit on SIGTERM; then SIGKILL.
            self._call("destroy domain", destroy, libvirt.VIR_DOMAIN_DESTROY_DEFAULT)

    def request_shutdown(self, uuid: str) -> None:
        """Ask the guest to power off: guest agent first, ACPI as fallback."""
        def shutdown(conn: t.Any) -> None:
            dom = conn.lookupByUUIDString(uuid)
            try:
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
            except libvirt.libvirtError:
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        self._call("shutdown domain", shutdown)

    def undefine_domain(self, uuid: str) -> None:
        self._call("undefine domain", lambda conn: conn.lookupByUUIDString(uuid).undefine())

    def set_metadata(self, uuid: str, xml: str, namespace: str, prefix: str) -> None:
        """Replace our metadata element (live and persistent)."""
        self._set_metadata("set metadata", uuid, libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml,
                           prefix, namespace)

    def set_title(self, uuid: str, title: str) -> None:
        """Replace the one-line title operators see in ``virsh list --title``."""
        self._set_metadata("set title", uuid, libvirt.VIR_DOMAIN_METADATA_TITLE, title, None,
                           None)

    def _set_metadata(self, what: str, uuid: str, kind: int, value: str, prefix: str | None,
                      namespace: str | None) -> None:
        def update(conn: t.Any) -> None:
            dom = conn.lookupByUUIDString(uuid)
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.setMetadata(kind, value, prefix, namespace, flags)
        self._call(what, update)

    def save_domain(self, uuid: str, path: str, timeout: float) -> None:
        """Save a running domain's memory to ``path`` (libvirt save image); it stops."""
        self._call("save domain",
                   lambda conn: conn.lookupByUUIDString(uuid).save(path), timeout=timeout)

    def restore_domain(self, path: str, timeout: float) -> None:
        """Run the domain saved in ``path`` again (its embedded XML names the domain)."""
        self._call("restore domain",
                   lambda conn: conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING),
                   timeout=timeout)


def _info(dom: t.Any) -> DomainInfo:
    state, _reason = dom.state()
    return DomainInfo(uuid=dom.UUIDString(), name=dom.name(),
                      state=STATE_NAMES.get(state, "nostate"), xml=_service_metadata(dom))


def _service_metadata(dom: t.Any) -> str:
    """The domain's ``<rds:vm>`` element, "" when it has none (a domain made by hand)."""
    try:
        return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return ""
        raise
