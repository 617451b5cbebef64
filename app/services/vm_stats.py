"""A VM's resource use, from libvirt's domain stats: CPU, memory, disk and network counters,
and uptime since the guest was last started (its record's ``startedAt``). A remote host's VM
(``HOSTS``) is read from that host's libvirt."""
from __future__ import annotations

import dataclasses
import time
import typing as t

from app.clock import age_s, now_iso
from app.errors import VmNotFound
from app.models import VmRecord
from app.services.records import VmRecords, to_vm

if t.TYPE_CHECKING:
    from app.services.remote_vms import RemoteVms
    from app.virt.connection import Hypervisor

CPU_WINDOW_S = 0.25  # CPU % is measured over this long


@dataclasses.dataclass(frozen=True)
class VmStats:
    vm_id: str
    state: str
    sampled_at: str
    uptime_s: float | None
    cpu: dict[str, t.Any]
    memory: dict[str, t.Any]
    disk: dict[str, int]
    network: dict[str, int]


class VmStatsReader:
    def __init__(self, hypervisor: Hypervisor, records: VmRecords,
                 remote: RemoteVms | None = None) -> None:
        """:param remote: the remote hosts' VMs (``HOSTS``), or None."""
        self.hypervisor = hypervisor
        self.records = records
        self.remote = remote

    def read(self, vm_id: str) -> VmStats:
        """:raises VmNotFound: unknown VM.
        :raises HypervisorError: not here, and the host it is on (or may be on) is DOWN."""
        try:
            record, info = self.records.lookup(vm_id)
        except VmNotFound:
            if self.remote is None:
                raise
            found = self.remote.find(vm_id)
            return self._sample(found.hypervisor, found.record, found.state)
        return self._sample(self.hypervisor, record, info.state)

    @staticmethod
    def _sample(hypervisor: Hypervisor, record: VmRecord, run_state: str) -> VmStats:
        vm_id = record.id
        state = to_vm(record, run_state).state.value
        first = hypervisor.domain_stats(vm_id)
        started = time.monotonic()
        percent = None
        if run_state == "running" and "cpu.time" in first:
            time.sleep(CPU_WINDOW_S)
            second = hypervisor.domain_stats(vm_id)
            elapsed_ns = (time.monotonic() - started) * 1e9
            if "cpu.time" in second:
                percent = round(100 * (second["cpu.time"] - first["cpu.time"]) / elapsed_ns, 1)
                first = second
        return VmStats(vm_id=vm_id, state=state, sampled_at=now_iso(),
                       uptime_s=_uptime(record) if run_state == "running" else None,
                       cpu={"timeNs": int(first.get("cpu.time", 0)), "percent": percent,
                            "vcpus": int(first.get("vcpu.current", record.cpu))},
                       memory=_memory(first, record), disk=_summed(first, "block", {
                           "rd.bytes": "readBytes", "wr.bytes": "writeBytes",
                           "rd.reqs": "readOps", "wr.reqs": "writeOps"}),
                       network=_summed(first, "net", {
                           "rx.bytes": "rxBytes", "tx.bytes": "txBytes",
                           "rx.pkts": "rxPackets", "tx.pkts": "txPackets"}))


def _uptime(record: VmRecord) -> float | None:
    try:
        return round(age_s(record.started_at), 1) if record.started_at else None
    except ValueError:
        return None


def _memory(stats: dict[str, t.Any], record: VmRecord) -> dict[str, t.Any]:
    rss_kib = stats.get("balloon.rss")
    return {"assignedMb": record.mem_mb,
            "rssMb": round(rss_kib / 1024, 1) if rss_kib is not None else None}


def _summed(stats: dict[str, t.Any], prefix: str, names: dict[str, str]) -> dict[str, int]:
    """``block.0.rd.bytes`` + ``block.1.rd.bytes`` … → ``readBytes``."""
    count = int(stats.get(f"{prefix}.count", 0))
    return {out: sum(int(stats.get(f"{prefix}.{index}.{key}", 0)) for index in range(count))
            for key, out in names.items()}
