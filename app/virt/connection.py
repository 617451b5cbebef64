"""Hypervisor: the only module that imports libvirt.

Every call runs on a helper thread with a deadline, because libvirt-python calls block without
a timeout of their own: a hung libvirtd becomes :class:`HypervisorError` (503) instead of a
stuck worker. libvirt errors are translated here, once: no such domain → :class:`VmNotFound`,
anything else → :class:`HypervisorError`.
"""
from __future__ import annotations

import atexit
import base64
import concurrent.futures
import json
import logging
import os
import threading
import time
import typing as t

import libvirt
import libvirt_qemu

from app.errors import FilterNotFound, HypervisorError, VmNotFound
from app.models import NAME_PREFIX, DomainInfo
import contextlib

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

_event_loop_pid: int | None = None  # the process whose thread runs libvirt's event loop
_event_loop_lock = threading.Lock()


def _silence_default_handler(_ctx: t.Any, _err: t.Any) -> None:
    """libvirt prints every error to stderr by default; we log ours where we handle them."""


libvirt.registerErrorHandler(_silence_default_handler, None)


def _start_event_loop() -> None:
    """Keepalives need libvirt's event loop; one daemon thread per process runs it.

    Per *process*: gunicorn's master opens a connection before it forks the workers, and a
    fork copies the "started" state but not the thread. Without a loop nobody answers
    libvirtd's keepalive probes and it drops the connection after ~30 s idle.
    """
    global _event_loop_pid
    with _event_loop_lock:
        if _event_loop_pid == os.getpid():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_pid = os.getpid()


def _never_sent(exc: libvirt.libvirtError) -> bool:
    """The RPC layer failed before the request was written: the socket was already closed
    ("client socket is closed") or the write itself failed ("Cannot write data")."""
    if exc.get_error_domain() != libvirt.VIR_FROM_RPC:
        return False
    message = exc.get_error_message() or ""
    return "client socket is closed" in message or "Cannot write data" in message


class Hypervisor:
    """A libvirt connection with timeouts; one per worker process, reopened when it dies.

    :param uri: libvirt URI, e.g. ``qemu:///system``.
    :param timeout: seconds any single libvirt call may take.
    """

    def __init__(self, uri: str, timeout: float) -> None:
        self.uri = uri
        self.timeout = timeout
        self._conn: t.Any = None
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                           thread_name_prefix="libvirt")
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
            _start_event_loop()
            conn = libvirt.open(self.uri)
            try:
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError as exc:  # a driver without RPC (test:///)
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            self._conn = conn
            return conn

    def _call(self, what: str, fn: t.Callable[..., t.Any], *args: t.Any,
              timeout: float | None = None) -> t.Any:
        future = self._pool.submit(self._run, fn, *args)
        try:
            return future.result(timeout=timeout or self.timeout)
        except concurrent.futures.TimeoutError:
            raise HypervisorError(f"libvirt did not answer {what} within "
                                  f"{timeout or self.timeout:.0f}s") from None

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
                return fn(self._connection(), *args)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmNotFound(exc.get_error_message() or "no such domain") from exc
            if code == libvirt.VIR_ERR_NO_NWFILTER:
                raise FilterNotFound(exc.get_error_message() or "no such nwfilter") from exc
            raise HypervisorError(f"libvirt: {exc.get_error_message() or exc}") from exc

    # Queries ###############################################################################

    def ping(self) -> str:
        """libvirt's version string; raises HypervisorError when unreachable."""
        def version(conn: t.Any) -> str:
            number = conn.getLibVersion()
            return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"
        return self._call("ping", version)

    def emulator_version(self) -> str:
        """The hypervisor's (QEMU's) version: saved guests only restore on the one that saved
        them."""
        def version(conn: t.Any) -> str:
            number = conn.getVersion()
            return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"
        return self._call("hypervisor version", version)

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

    # Domain lifecycle ######################################################################

    def define_domain(self, xml: str) -> None:
        log.debug("defining domain xml=%s", xml)
        self._call("define domain", lambda conn: conn.defineXML(xml))

    def start_domain(self, uuid: str) -> None:
        self._call("start domain", lambda conn: conn.lookupByUUIDString(uuid).create())

    def destroy_domain(self, uuid: str) -> None:
        """Hard power-off; a domain that is not running is left as it is."""
        def destroy(conn: t.Any) -> None:
            dom = conn.lookupByUUIDString(uuid)
            if dom.isActive():
                dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        try:
            self._call("destroy domain", destroy)
        except HypervisorError:
            # GRACEFUL gives up when qemu does not exit on SIGTERM; then SIGKILL.
            self._call("destroy domain", lambda conn: conn.lookupByUUIDString(uuid).destroy())

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

    def set_guest_time(self, uuid: str, timeout: float) -> None:
        """Set the guest's clock to the host's now (qemu-guest-agent ``guest-set-time``).

        Sent as a raw agent command rather than ``virDomainSetTime``, which takes the
        domain's job lock and runs hwclock through the agent's own code path.
        """
        def set_time(conn: t.Any) -> None:
            request = {"execute": "guest-set-time", "arguments": {"time": time.time_ns()}}
            libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(uuid), json.dumps(request),
                                          int(timeout) or 1, 0)
        self._call("set guest time", set_time, timeout=timeout + 5)

    def guest_agent_ping(self, uuid: str, timeout: float) -> bool:
        """True when qemu-guest-agent in the guest answers."""
        def ping(conn: t.Any) -> bool:
            try:
                libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(uuid),
                                              '{"execute": "guest-ping"}', int(timeout) or 1, 0)
                return True
            except libvirt.libvirtError:
                return False
        return self._call("guest agent ping", ping, timeout=timeout + 5)

    def guest_agent_exec(self, uuid: str, path: str, args: list[str], timeout: float,
                         stdin: bytes | None = None) -> int:
        """Run a program as root in the guest through qemu-guest-agent (no network needed).

        :param stdin: bytes fed to the program's standard input (kept off its command line).
        :returns: its exit code.
        :raises HypervisorError: when the agent does not answer or the program hangs.
        """
        pid = self.guest_agent_spawn(uuid, path, args, timeout, stdin)
        return self.guest_agent_wait(uuid, pid, timeout)

    def guest_agent_spawn(self, uuid: str, path: str, args: list[str], timeout: float,
                          stdin: bytes | None = None) -> int:
        """Start a program as root in the guest (``guest-exec``) and return its guest pid at
        once; :meth:`guest_agent_wait` collects the exit code. Other agent commands may be
        sent meanwhile.

        :raises HypervisorError: when the agent does not answer.
        """
        def spawn(conn: t.Any) -> int:
            request: dict[str, t.Any] = {"execute": "guest-exec",
                                         "arguments": {"path": path, "arg": args}}
            if stdin is not None:
                request["arguments"]["input-data"] = base64.b64encode(stdin).decode()
            reply = libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(uuid),
                                                  json.dumps(request), int(timeout) or 1, 0)
            return int(json.loads(reply)["return"]["pid"])
        return self._call("guest agent exec", spawn, timeout=timeout + 5)

    def guest_agent_wait(self, uuid: str, pid: int, timeout: float) -> int:
        """Wait for a program started by :meth:`guest_agent_spawn`; returns its exit code.

        :raises HypervisorError: when the agent does not answer or the program hangs.
        """
        def wait(conn: t.Any) -> int:
            dom = conn.lookupByUUIDString(uuid)
            request = json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = json.loads(libvirt_qemu.qemuAgentCommand(
                    dom, request, int(timeout) or 1, 0))["return"]
                if status.get("exited"):
                    return int(status.get("exitcode", -1))
                time.sleep(0.02)
            raise HypervisorError(f"guest agent command (pid {pid}) did not finish in time")
        return self._call("guest agent wait", wait, timeout=timeout + 5)

    def fs_freeze(self, uuid: str, timeout: float) -> int:
        """Flush and freeze the guest's filesystems through qemu-guest-agent
        (``virDomainFSFreeze``); the guest's writes wait until :meth:`fs_thaw`.

        :returns: how many filesystems were frozen.
        :raises HypervisorError: no agent, the agent refused, or no answer within ``timeout``
            (the freeze may still land later: always follow with :meth:`fs_thaw`).
        """
        return self._call("freeze guest filesystems",
                          lambda conn: conn.lookupByUUIDString(uuid).fsFreeze(None, 0),
                          timeout=timeout)

    def fs_thaw(self, uuid: str, timeout: float) -> int:
        """Thaw the guest's filesystems (``virDomainFSThaw``); harmless when none are frozen.

        :returns: how many filesystems were thawed.
        :raises HypervisorError: no agent, or no answer within ``timeout``.
        """
        return self._call("thaw guest filesystems",
                          lambda conn: conn.lookupByUUIDString(uuid).fsThaw(None, 0),
                          timeout=timeout)

    # Filters and network ###################################################################

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
            if b.portDev().startswith(DOMAIN_PREFIX)])

    def list_filter_names(self) -> list[str]:
        return self._call("list nwfilters", lambda conn: [
            f.name() for f in conn.listAllNWFilters(0) if f.name().startswith(DOMAIN_PREFIX)])

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


def _info(dom: t.Any) -> DomainInfo:
    state, _reason = dom.state()
    return DomainInfo(uuid=dom.UUIDString(), name=dom.name(),
                      state=STATE_NAMES.get(state, "nostate"), xml=dom.XMLDesc(0))
