"""The series read from libvirt when /metrics is scraped (not counted by any worker): the
callers' VMs by state, the warm pool's size, whether libvirt answered at all, and each host's
state, CPUs, memory and VMs (label ``host``, as ``GET /v1/hosts`` names them)."""
from __future__ import annotations

import typing as t

from prometheus_client.core import GaugeMetricFamily

from app.errors import AppError
from app.models import VmPhase, VmRole, VmState
from app.services.records import VmRecords, vm_state

if t.TYPE_CHECKING:
    from app.services.hosts import Host, HostsView

MIB = 1024 * 1024


class HostCollector:
    """A prometheus-client collector; register it on the scrape's registry."""

    def __init__(self, records: VmRecords, hosts: HostsView | None = None) -> None:
        self.records = records
        self.hosts = hosts

    def collect(self) -> t.Iterator[GaugeMetricFamily]:
        yield from self._vms()
        if self.hosts is not None:
            yield from host_families(self.hosts.list(with_images=False))

    def _vms(self) -> t.Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("rds_libvirt_up", "1 when libvirt answered this scrape")
        try:
            found = self.records.all()
        except AppError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_state = {state.value: 0 for state in VmState}
        pool = 0
        for record, info in found:
            if record.role is VmRole.POOL:
                pool += record.phase is VmPhase.READY and info.state == "running"
            elif record.role is VmRole.SANDBOX and record.phase is not VmPhase.DELETING:
                by_state[vm_state(info.state, record.phase).value] += 1
        vms = GaugeMetricFamily("rds_vms", "Callers' VMs by state", labels=["state"])
        for state, count in by_state.items():
            vms.add_metric([state], count)
        yield vms
        ready = GaugeMetricFamily("rds_warm_pool_vms", "Warm-pool VMs ready to hand out")
        ready.add_metric([], pool)
        yield ready

    def describe(self) -> list:
        return []  # collected at scrape time only


def host_families(hosts: list[Host]) -> list[GaugeMetricFamily]:
    """One series per host in each family; a DOWN host has only ``rds_host_up`` 0."""
    families = {
        "up": GaugeMetricFamily("rds_host_up", "1 when the host's libvirt answered this scrape",
                                labels=["host"]),
        "cpus": GaugeMetricFamily("rds_host_cpus", "The host's CPUs", labels=["host"]),
        "memory": GaugeMetricFamily("rds_host_memory_bytes", "The host's memory",
                                    labels=["host"]),
        "available": GaugeMetricFamily("rds_host_memory_available_bytes",
                                       "Free memory, buffers and page cache on the host",
                                       labels=["host"]),
        "vms": GaugeMetricFamily("rds_host_vms", "Callers' VMs on the host", labels=["host"]),
        "max_vms": GaugeMetricFamily("rds_host_max_vms", "The host's MAX_VMS",
                                     labels=["host"]),
    }
    for host in hosts:
        families["up"].add_metric([host.name], 1 if host.state == "UP" else 0)
        if host.state != "UP":
            continue
        families["cpus"].add_metric([host.name], host.cpus or 0)
        families["memory"].add_metric([host.name], (host.memory_mb or 0) * MIB)
        families["available"].add_metric([host.name], (host.free_memory_mb or 0) * MIB)
        families["vms"].add_metric([host.name], host.vms or 0)
        families["max_vms"].add_metric([host.name], host.max_vms)
    return list(families.values())
