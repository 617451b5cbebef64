"""Host calls of :class:`app.virt.connection.Hypervisor` (a mixin): the machine libvirt runs
on, and the versions of libvirt and its hypervisor, rather than any one domain."""
from __future__ import annotations

import typing as t

import libvirt

from app.models import NodeInfo


class NodeCalls:
    """Ask libvirt about its host and itself. Needs the connection's ``_call``."""

    _call: t.Callable[..., t.Any]

    def ping(self) -> str:
        """libvirt's version string; raises HypervisorError when unreachable."""
        return self._call("ping", lambda conn: _dotted(conn.getLibVersion()))

    def emulator_version(self) -> str:
        """The hypervisor's (QEMU's) version: saved guests only restore on the one that saved
        them."""
        return self._call("hypervisor version", lambda conn: _dotted(conn.getVersion()))

    def node_info(self) -> NodeInfo:
        """The host's name, CPUs, memory and memory available for guests (free, buffers and
        page cache), as libvirt sees them. Memory comes from the node's memory statistics (the
        host's /proc/meminfo): ``virNodeGetInfo`` and ``virNodeGetFreeMemory`` sum the NUMA
        cells, which on some virtualised hosts (this CI machine) cover half the memory."""
        def read(conn: t.Any) -> NodeInfo:
            _model, _cells_memory_mb, cpus, *_topology = conn.getInfo()
            memory = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)  # KiB
            available = memory["free"] + memory.get("buffers", 0) + memory.get("cached", 0)
            return NodeInfo(hostname=conn.getHostname(), cpus=cpus,
                            memory_mb=memory["total"] // 1024,
                            free_memory_mb=available // 1024,
                            hypervisor_version=_dotted(conn.getVersion()))
        return self._call("node info", read)


def _dotted(number: int) -> str:
    """libvirt's version numbers (major * 1,000,000 + minor * 1,000 + release) as text."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"
