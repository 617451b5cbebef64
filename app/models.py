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
    UNKNOWN = "UNKNOWN"  # on a remote host that does not answer (its last known record)


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
    BUILD = "build"  # a VM running an image's setup script (app.services.image_builder)


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
    created_by: str = ""  # the actor that asked (filled in by the VM service)
    owner_key: str = ""  # the managed API key's id that asked; "" for others
    owner_max_vms: int | None = None  # that key's own VM quota
    host: str = ""  # placement: a HOSTS name, or "" / "local" for the local host (issue 17)


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
    created_by: str = ""  # the actor that created it ("key:<name>", "api-key", "session:...")
    owner_key: str = ""  # the id of the managed API key that created it; "" for others
    host: str = ""  # the HOSTS name of the host it runs on; "" for the local host


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """What the manager reads about one of its libvirt domains."""

    uuid: str
    name: str
    state: str  # libvirt's run state: running, paused, shutdown, shutoff, crashed, nostate
    # The domain's service metadata element (``<rds:vm>``, app.virt.domain_xml) as XML, "" for
    # a domain without one: read alone (virDomainGetMetadata), not in the whole domain XML,
    # which libvirtd would format and the manager parse on every call about a VM.
    xml: str


@dataclasses.dataclass(frozen=True)
class VolumeTail:
    """The end of a storage volume that something on its host appends to (a remote VM's
    console log, which that host's virtlogd writes)."""

    data: bytes
    start: int  # the offset in the volume of ``data``'s first byte (0: nothing before it)
    modified: float | None  # the volume's mtime, seconds since the epoch; None if not told


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """What libvirt says about the machine it runs on."""

    hostname: str
    cpus: int
    memory_mb: int
    free_memory_mb: int
    hypervisor_version: str  # QEMU's


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
    created_by: str | None = None  # None for VMs older than the record field
    owner_key: str = ""
    host: str = "local"  # the host it runs on (LOCAL_HOST or a HOSTS name)


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
    created_by: str = ""  # the actor that took it
    owner_key: str = ""  # the managed API key's id that took it; "" for others


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


class ImageState(str, enum.Enum):
    """Where a custom image is; built-in templates are READY or NOT_BUILT."""

    PENDING = "PENDING"  # waiting for an upload the request announced (files, disk)
    BUILDING = "BUILDING"  # queued or being built
    READY = "READY"
    FAILED = "FAILED"
    NOT_BUILT = "NOT_BUILT"  # a built-in template whose image this host never built


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """A custom image as its ``image.json`` keeps it (see app.services.image_store)."""

    id: str
    description: str
    base: str  # the image it is built from
    template: str  # the built-in template behind it: domain XML, kernel command line
    state: ImageState
    created_at: str
    allow_ips: tuple[str, ...] = ()  # the build VM's egress policy
    outbound_internet: bool = False
    timeout_s: int = 900  # the setup script's time limit
    cpu: int = 1  # the build VM's shape
    mem_mb: int = 1024
    disk_size_mb: int = 0  # the image's disk size; 0 until known (the base's at least)
    awaiting: tuple[str, ...] = ()  # uploads announced and not made yet: "files", "disk"
    has_files: bool = False
    disk_format: str = ""  # of an uploaded disk: "raw" or "qcow2"
    reason: str = ""  # why it FAILED
    attempts: int = 0  # builds started (an interrupted one is started again, once)
    started_at: str = ""
    finished_at: str = ""
    build_vm: str = ""  # the running build VM's id
    build: str = ""  # the finished build's directory name


@dataclasses.dataclass(frozen=True)
class HostReadiness:
    """Whether an image can be used on a host (app.services.image_shipping)."""

    name: str
    ready: bool
    snapshot_ready: bool = False  # its memory snapshots of every SNAPSHOT_SHAPES shape there


@dataclasses.dataclass(frozen=True)
class Image:
    """An image as the API shows it: a built-in template or a custom image."""

    id: str
    description: str
    state: ImageState
    built_in: bool
    is_default: bool
    snapshot_ready: bool
    base: str | None = None
    reason: str | None = None
    size_mb: int | None = None
    disk_size_mb: int | None = None
    created_at: str | None = None
    build_started_at: str | None = None
    build_finished_at: str | None = None
    awaiting: tuple[str, ...] = ()
    allow_ips: tuple[str, ...] = ()
    outbound_internet: bool = False
    timeout_s: int | None = None
    hosts: tuple[HostReadiness, ...] = ()  # filled where answers are made (ImageService)


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    """What a caller asked to build (``POST /v1/images``)."""

    name: str
    setup: str = ""
    description: str = ""
    base: str | None = None  # None: the default image
    allow_ips: tuple[str, ...] = ()
    outbound_internet: bool = False
    timeout_s: int | None = None  # None: IMAGE_BUILD_TIMEOUT_S
    cpu: int = 1
    mem_mb: int | None = None  # None: 1024 (at most MAX_MEM_MB)
    disk_size_mb: int | None = None  # None: the base's
    files: bool = False  # a tar.gz of files follows (PUT /v1/images/{id}/files)
    disk: bool = False  # the disk is uploaded (PUT /v1/images/{id}/disk) instead of the base's


@dataclasses.dataclass(frozen=True)
class BuildLogView:
    """The tail of an image's build log."""

    image_id: str
    state: ImageState
    lines: list[str]
    truncated: bool
    updated_at: str | None


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A managed API key as the API shows it (never its secret)."""

    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    max_vms: int | None
    created_at: str
    created_by: str
    expires_at: str | None = None
    last_used_at: str | None = None
    revoked_at: str | None = None


@dataclasses.dataclass(frozen=True)
class NewApiKey:
    """A key just created: ``secret`` is the whole key, shown this once."""

    key: ApiKey
    secret: str
