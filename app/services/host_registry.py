"""The remote libvirt hosts of ``HOSTS`` (issue 17): one connection each, probed in bounded time.

Each host has its own :class:`~app.virt.connection.Hypervisor` (libvirt's remote driver),
opened lazily on its first call, with a short keepalive so a host that stops answering has its
connection closed within seconds, and no reconnect window (a host that is gone fails at once).

A probe (what ``GET /v1/hosts`` and ``/metrics`` show) asks every host at once and waits at
most ``HOST_PROBE_TIMEOUT_S``: a host that has not answered by then is DOWN ("did not answer
within ..."), whatever its libvirt call is still doing. Connecting to an address that drops
packets can block a libvirt call for the kernel's TCP timeout (minutes), so at most one probe
per host is in flight: a later probe waits for that one instead of starting another, and no
call piles up behind a dead host.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import typing as t

from app.config import Settings
from app.config.hosts import RemoteHost
from app.errors import AppError
from app.models import NodeInfo, VmPhase, VmRecord, VmRole
from app.services.image_shipping import read_shipped
from app.services.records import VmRecords
from app.services.remote_seeds import saved_seeds
from app.virt.pool_xml import POOL_NAME

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
REMOTE_KEEPALIVE = (2, 2)  # seconds between probes, missed answers: closed after ~6 s


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one host answered (``node`` set) or why it did not (``reason``)."""

    node: NodeInfo | None = None
    vms: int | None = None  # callers' VMs there, from its domains' metadata
    reason: str | None = None
    images: dict[str, str] | None = None  # shipped there: image id -> its build (when asked)
    seeds: frozenset[str] | None = None  # keys of its memory snapshots (with the images)
    # Every domain of this service there with its record (the VMs found on that host).
    records: tuple[tuple[VmRecord, t.Any], ...] = ()

    @property
    def up(self) -> bool:
        return self.node is not None


class HostRegistry:
    """The ``HOSTS`` entries and their connections. Thread-safe.

    :param open_host: makes a host's Hypervisor (the real one, or a fake in unit tests).
    """

    def __init__(self, settings: Settings,
                 open_host: t.Callable[[RemoteHost], Hypervisor]) -> None:
        self.settings = settings
        self.hosts = settings.remote_hosts
        self._hypervisors = {host.name: open_host(host) for host in self.hosts}
        self._in_flight: dict[tuple[str, bool], concurrent.futures.Future[Probe]] = {}
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, 2 * len(self.hosts)), thread_name_prefix="host-probe")

    def names(self) -> list[str]:
        return [host.name for host in self.hosts]

    def host(self, name: str) -> RemoteHost | None:
        return next((host for host in self.hosts if host.name == name), None)

    def hypervisor(self, name: str) -> Hypervisor:
        """:raises KeyError: not a ``HOSTS`` name."""
        return self._hypervisors[name]

    def probe(self, names: t.Iterable[str] | None = None,
              with_images: bool = False) -> dict[str, Probe]:
        """Ask the hosts (all, or ``names``) at once; each answer within the probe timeout.

        :param with_images: also read which images are shipped there (their manifests).
        """
        wanted = list(self.names() if names is None else names)
        futures = {name: self._start(name, with_images) for name in wanted}
        timeout = self.settings.host_probe_timeout_s
        done, _late = concurrent.futures.wait(futures.values(), timeout=timeout)
        found = {}
        for name, future in futures.items():
            if future in done:
                found[name] = future.result()
            else:
                found[name] = Probe(reason=f"libvirt did not answer within {timeout:g}s")
                log.warning("host %s did not answer within %gs", name, timeout)
        return found

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for hypervisor in self._hypervisors.values():
            hypervisor.close()

    def _start(self, name: str, with_images: bool) -> concurrent.futures.Future[Probe]:
        """The host's probe in flight, or a new one."""
        key = (name, with_images)
        with self._lock:
            running = self._in_flight.get(key)
            if running is not None and not running.done():
                return running
            future = self._executor.submit(self._ask, name, with_images)
            self._in_flight[key] = future
            return future

    def _ask(self, name: str, with_images: bool) -> Probe:
        hypervisor = self._hypervisors[name]
        try:
            node = hypervisor.node_info()
            found = VmRecords(hypervisor).all()
            volumes = set(hypervisor.list_volumes(POOL_NAME)) if with_images else set()
            images = read_shipped(hypervisor, volumes) if with_images else None
        except AppError as exc:
            log.warning("host %s does not answer: %s", name, exc.message)
            return Probe(reason=exc.message)
        return Probe(node=node, vms=callers_vms(found), images=images, records=tuple(found),
                     seeds=frozenset(saved_seeds(volumes)) if with_images else None)


def callers_vms(found: t.Iterable[tuple[VmRecord, t.Any]]) -> int:
    """The callers' VMs among a host's records: not pool VMs or seeds, not being deleted."""
    return sum(1 for record, _info in found
               if record.role is VmRole.SANDBOX and record.phase is not VmPhase.DELETING)


def open_remote(settings: Settings) -> t.Callable[[RemoteHost], Hypervisor]:
    """Real connections: the Hypervisor over libvirt's remote driver."""
    from app.virt.connection import Hypervisor

    def open_host(host: RemoteHost) -> Hypervisor:
        return Hypervisor(host.uri, settings.libvirt_timeout_s, keepalive=REMOTE_KEEPALIVE,
                          reconnect_window_s=0, drop_late_calls=True)
    return open_host
