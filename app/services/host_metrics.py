"""The series read from libvirt when /metrics is scraped (not counted by any worker): the
callers' VMs by state, the warm pool's size, and whether libvirt answered at all."""
from __future__ import annotations

import typing as t

from prometheus_client.core import GaugeMetricFamily

from app.errors import AppError
from app.models import VmPhase, VmRole, VmState
from app.services.records import VmRecords, vm_state


class HostCollector:
    """A prometheus-client collector; register it on the scrape's registry."""

    def __init__(self, records: VmRecords) -> None:
        self.records = records

    def collect(self) -> t.Iterator[GaugeMetricFamily]:
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
