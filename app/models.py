"""Frozen dataclasses passed between layers."""
from __future__ import annotations

import dataclasses
import enum

# Every name this service gives a libvirt or kernel object starts with it (domains, filters,
# taps, ipsets): the sweep recognises its own objects by it, and operators with virsh do too.
NAME_PREFIX = "rds-"


def vm_name(vm_id: str) -> str:
    """A VM's domain name: ``rds-`` and the first group of its UUID."""
    return NAME_PREFIX + vm_id.split("-")[0]


class VmState(str, enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


class VmPhase(str, enum.Enum):
    """What the manager last did to a VM, kept in the domain's metadata.

    The libvirt run state says whether qemu is running; the phase says whether the guest has
    answered since (``ready``), so every worker process reports the same state.
    """

    CREATING = "creating"  # a create in progress: swept when older than any create can take
    STARTING = "starting"  # a start of a stopped VM in progress
    READY = "ready"
    STOPPING = "stopping"
    DELETING = "deleting"  # powered off and gone for callers; its parts are being removed


class VmRole(str, enum.Enum):
    """What a domain of this service is for; only sandboxes appear in the API."""

    SANDBOX = "sandbox"  # a caller's VM
    POOL = "pool"  # a warm-pool VM waiting to be claimed (sealed, invisible)
    SEED = "seed"  # a booted idle guest being saved as a memory snapshot


class ProvisionMode(str, enum.Enum):
    """How a VM is made: ``auto`` picks the fastest path that is available."""

    AUTO = "auto"
    BOOT = "boot"
    SNAPSHOT = "snapshot"
    POOL = "pool"


@dataclasses.dataclass(frozen=True)
class VmSpec:
    """What a caller asked for."""

    cpu: int
    mem_mb: int
    allow_ips: tuple[str, ...] = ()
    outbound_internet: bool = False
    image_id: str | None = None
    disk_size_mb: int | None = None
    provision_mode: ProvisionMode = ProvisionMode.AUTO
    snapshot_id: str | None = None  # start the disk from this snapshot (extension)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    ttl_s: int | None = None  # delete this long after create (0: never; None: the default)
    idle_stop_s: int = 0  # stop after this long without API activity (0: never)


@dataclasses.dataclass(frozen=True)
class VmRecord:
    """Everything the manager keeps about a VM; serialised into the domain's metadata."""

    id: str
    name: str
    cpu: int
    mem_mb: int
    guest_ip: str
    mac: str
    allow_ips: tuple[str, ...]
    outbound_internet: bool
    image_id: str
    image_path: str
    disk_size_mb: int
    created_at: str
    provision_mode: ProvisionMode
    host_key: str
    phase: VmPhase = VmPhase.STARTING
    snapshot_id: str = ""  # the snapshot its disk started from; "" when none
    role: VmRole = VmRole.SANDBOX
    seed: str = ""  # the memory snapshot (seed) a restored VM came from; its disk backs ours
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    ttl_s: int = 0  # the lifetime asked for; keepalive without a value renews this much
    expires_at: str = ""  # ISO time the VM is deleted at; "" when never
    idle_stop_s: int = 0  # stopped after this long without API activity; 0: never
    started_at: str = ""  # when the guest was last booted or restored; "" for older records


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """What the manager reads about one of its libvirt domains."""

    uuid: str
    name: str
    state: str  # libvirt's run state: running, paused, shutdown, shutoff, crashed, nostate
    xml: str


@dataclasses.dataclass(frozen=True)
class Vm:
    """A VM as the API shows it."""

    id: str
    state: VmState
    cpu: int
    mem_mb: int
    guest_ip: str
    outbound_internet: bool
    allow_ips: tuple[str, ...]
    created_at: str
    image_id: str
    provision_mode: ProvisionMode
    name: str
    snapshot_id: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    expires_at: str | None = None
    idle_stop_s: int = 0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A copy of a VM's disk that new VMs can start from (a "user_overlay" snapshot).

    Its qcow2 depends on nothing but the template image it is based on, so it outlives the VM
    it was taken from.
    """

    id: str
    created_at: str
    cpu: int
    mem_mb: int
    image_id: str
    source_vm_id: str
    image_path: str  # absolute path of the template image (a build's disk.qcow2) behind it
    disk_size_mb: int
    disk_path: str  # its own qcow2, never written to
    kind: str = "user_overlay"
    has_overlay: bool = True


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a guest command produced; output beyond the cap is dropped and flagged."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int = 0
    stderr_tail: bytes = b""  # the last bytes of stderr, kept when the head was capped


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    """Output of a streamed command, as it arrived: ``stream`` is "stdout" or "stderr"."""

    stream: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class RunResult:
    """A run-ts / run-js outcome: the command's result plus the script's ``result``/``error``."""

    command: CommandResult
    outcome: dict


@dataclasses.dataclass(frozen=True)
class Template:
    """A VM template from ``vm-templates/<id>/``."""

    id: str
    description: str
    image: str
    domain_xml: str
    default_disk_size_mb: int
    kernel_cmdline: str
