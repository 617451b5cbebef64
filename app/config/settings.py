"""The settings: every knob with its default, its environment name and derived values.

Names follow the original run-dat-sheesh service where it had one (``API_KEY``, ``PORT``,
``MAX_VMS``, ...). A bad value stops the service at start with a message naming the variable.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from app.config.hosts import RemoteHost, parse_hosts

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_API_KEY = "dev-key"
DEV_SECRET = "dev-secret-change-me"
DEV_ADMIN_PASSWORD = "admin"
MIN_SECRET_LENGTH = 16


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the service must not start."""


@dataclasses.dataclass(frozen=True)
class Settings:
    app_env: str = "development"
    api_key: str = DEV_API_KEY
    admin_email: str = "admin@example.com"
    admin_password: str = DEV_ADMIN_PASSWORD
    secret_key: str = DEV_SECRET
    bind_host: str = "127.0.0.1"  # what gunicorn listens on (deploy/gunicorn.conf.py)
    port: int = 3000
    max_vms: int = 20
    max_cpu: int = 4
    max_mem_mb: int = 2048
    max_allow_ips: int = 64
    max_exec_timeout_ms: int = 120_000
    default_exec_timeout_ms: int = 30_000
    max_output_bytes: int = 1_000_000
    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_uncompressed_bytes: int = 512 * 1024 * 1024
    max_upload_entries: int = 10_000
    max_download_bytes: int = 512 * 1024 * 1024
    # Disks: a VM's diskSizeMb at most; VM disks (their full size) + snapshots at most
    # DISK_BUDGET_MB (0: whatever the storage filesystem can hold, keeping DISK_RESERVE_MB
    # free); at most MAX_SNAPSHOTS snapshots.
    max_disk_size_mb: int = 65536
    disk_budget_mb: int = 0
    disk_reserve_mb: int = 2048
    max_snapshots: int = 100
    # Lifetimes: a VM's ttlSeconds when it gives none, and the most it may ask for (0: no
    # default lifetime / no maximum; with a maximum, every VM must have a lifetime).
    vm_default_ttl_s: int = 0
    vm_max_ttl_s: int = 0
    # Exec history (GET /v1/vms/{id}/exec-logs): calls kept per VM, and for at most how long.
    exec_log_per_vm: int = 100
    exec_log_max_age_s: int = 7 * 24 * 3600
    # Custom images (docs/images.md): how many at most, the setup script's default and largest
    # time limit, the largest uploaded disk (bytes sent) and how long an image waits for the
    # uploads its create announced.
    max_images: int = 20
    image_build_timeout_s: int = 900
    max_image_build_timeout_s: int = 3600
    max_image_upload_mb: int = 4096
    image_upload_wait_s: int = 3600
    events_max_age_s: int = 30 * 24 * 3600  # the activity feed's memory
    # Webhook deliveries (app.services.webhook_delivery): each POST's time limit, the retry
    # backoff (doubling from the base up to the cap, with jitter), how long a delivery is
    # retried before it is marked failed, and how many are sent at once (all webhooks).
    webhook_timeout_s: float = 10.0
    webhook_retry_base_s: float = 10.0
    webhook_retry_max_s: float = 900.0
    webhook_retry_for_s: float = 3600.0
    webhook_parallel: int = 4
    storage_root: str = "/var/lib/run-dat-sheesh"
    templates_dir: str = str(REPO_ROOT / "vm-templates")
    default_image_id: str = "default"
    libvirt_uri: str = "qemu:///system"
    accelerator: str = "auto"
    network_name: str = "rds-net"
    network_bridge: str = "rds-br0"
    network_cidr: str = "172.16.0.0/24"
    network_mode: str = "isolated"
    # Ranges no guest may ever reach, whatever its allowIps (comma-separated IPv4 CIDRs), on top
    # of link-local (169.254.0.0/16), which is always in: e.g. the LAN of a NAT-mode host.
    egress_never_cidrs: str = ""
    boot_timeout_s: float = 240.0
    stop_timeout_s: float = 30.0
    libvirt_timeout_s: float = 30.0
    ssh_connect_timeout_s: float = 5.0
    ssh_auth_timeout_s: float = 10.0
    ssh_channel_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line
    metrics_public: str = "false"  # GET /metrics without a key
    trusted_proxies: int = 0
    # gunicorn threads per worker (deploy/gunicorn.conf.py reads the same variable) and how
    # many of them may run long calls at once (0: all but 4); see app/api/limits.py. 32: a
    # client's connections stay with the worker that accepted them and the kernel spreads
    # them unevenly, so one worker must take all of 16 concurrent long calls (RELIABILITY.md).
    web_threads: int = 32
    long_call_slots: int = 0
    # Admin sessions (server-side, app.store) and login rate limits.
    session_idle_timeout_s: int = 12 * 3600
    session_max_age_s: int = 7 * 24 * 3600
    login_max_failures: int = 5  # per client address and per account, then a lockout
    login_failure_window_s: int = 15 * 60  # failures older than this (since the last) reset
    login_max_lockout_s: int = 15 * 60  # the lockout doubles per failure up to this
    # Memory snapshots: VM shapes ("CPUxMEM_MB", comma-separated) kept as saved booted guests.
    snapshot_shapes: str = "1x256"
    snapshot_auto_build: str = "true"  # build a missing one in the background on first use
    # Warm pool: pre-started sealed VMs handed out on create.
    enable_warm_pool: str = "false"
    warm_pool_target: int = 1  # ready VMs kept per pooled shape
    warm_pool_max_vms: int = 4  # pool VMs at most, all shapes together
    warm_pool_shapes: str = "1x256"
    # Several hosts (issue 17, app/config/hosts.py, docs/multihost.md) -----------------------
    # HOSTS: a JSON list of the libvirt hosts besides LIBVIRT_URI's ("local"); empty: none.
    # HOST_PROBE_TIMEOUT_S: how long GET /v1/hosts and /metrics wait for a remote host's
    # libvirt before listing it DOWN.
    # PLACEMENT: where a create without placement.host goes: "local" (the local host, as
    # without HOSTS), "spread" (the host with room that is least full) or "pack" (the first
    # host with room: local, then HOSTS in order).
    hosts: str = ""
    host_probe_timeout_s: float = 3.0
    placement: str = "local"

    # Derived paths ------------------------------------------------------------------------
    @property
    def images_dir(self) -> Path:
        return Path(self.storage_root) / "images"

    @property
    def custom_images_dir(self) -> Path:
        """Custom images, one directory each (app.services.image_store)."""
        return self.images_dir / "custom"

    @property
    def image_volumes_dir(self) -> Path:
        """One link per image's disk: the libvirt storage pool ``rds-images`` lists them."""
        return self.images_dir / "volumes"

    @property
    def vms_dir(self) -> Path:
        return Path(self.storage_root) / "vms"

    @property
    def keys_dir(self) -> Path:
        return Path(self.storage_root) / "keys"

    @property
    def seeds_dir(self) -> Path:
        return Path(self.storage_root) / "seeds"

    @property
    def snapshot_shape_list(self) -> tuple[tuple[int, int], ...]:
        return parse_shapes(self.snapshot_shapes)

    @property
    def warm_pool_shape_list(self) -> tuple[tuple[int, int], ...]:
        return parse_shapes(self.warm_pool_shapes)

    @property
    def warm_pool_enabled(self) -> bool:
        return _truthy(self.enable_warm_pool)

    @property
    def snapshot_auto_build_enabled(self) -> bool:
        return _truthy(self.snapshot_auto_build)

    @property
    def metrics_are_public(self) -> bool:
        return _truthy(self.metrics_public)

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.storage_root) / "snapshots"

    @property
    def state_db_path(self) -> Path:
        """The embedded store (app.store): sessions, login attempts."""
        return Path(self.storage_root) / "state.db"

    @property
    def lock_path(self) -> Path:
        return Path(self.storage_root) / "allocation.lock"

    @property
    def snapshot_lock_path(self) -> Path:
        return Path(self.storage_root) / "snapshots.lock"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network_cidr)

    @property
    def gateway_ip(self) -> ipaddress.IPv4Address:
        """The host's address on the guest bridge: first host of the network."""
        return next(self.network.hosts())

    @property
    def egress_never_list(self) -> tuple[str, ...]:
        parts = (part.strip() for part in self.egress_never_cidrs.split(","))
        return tuple(part for part in parts if part)

    @property
    def long_call_limit(self) -> int:
        """Long calls a worker runs at once: LONG_CALL_SLOTS, or all threads but 4."""
        return self.long_call_slots or max(1, self.web_threads - 4)

    @property
    def remote_hosts(self) -> tuple[RemoteHost, ...]:
        """The ``HOSTS`` entries (validated at load: see app/config/hosts.py)."""
        return parse_hosts(self.hosts, self.libvirt_uri, self.network_cidr)

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def exposure(self) -> str:
        """Why others than this host's own users can reach the service ("" when nothing says
        so): a non-loopback BIND_HOST, a proxy in front (TRUSTED_PROXIES) or production."""
        reasons = []
        if not is_loopback(self.bind_host):
            reasons.append(f"BIND_HOST={self.bind_host} is not a loopback address")
        if self.trusted_proxies > 0:
            reasons.append(f"TRUSTED_PROXIES={self.trusted_proxies} (behind a proxy)")
        if self.is_production:
            reasons.append("APP_ENV=production")
        return ", ".join(reasons)

    @property
    def development_defaults(self) -> list[str]:
        """The secrets still at their public development default (or empty), by env name."""
        defaults = {"API_KEY": (self.api_key, DEV_API_KEY),
                    "ADMIN_PASSWORD": (self.admin_password, DEV_ADMIN_PASSWORD),
                    "SESSION_SECRET": (self.secret_key, DEV_SECRET)}
        return [name for name, (value, default) in defaults.items() if value in ("", default)]


ENV_NAMES: dict[str, str] = {
    "APP_ENV": "app_env",
    "API_KEY": "api_key",
    "ADMIN_EMAIL": "admin_email",
    "ADMIN_PASSWORD": "admin_password",
    "SESSION_SECRET": "secret_key",
    "BIND_HOST": "bind_host",
    "PORT": "port",
    "MAX_VMS": "max_vms",
    "MAX_CPU": "max_cpu",
    "MAX_MEM_MB": "max_mem_mb",
    "MAX_ALLOW_IPS": "max_allow_ips",
    "MAX_EXEC_TIMEOUT_MS": "max_exec_timeout_ms",
    "DEFAULT_EXEC_TIMEOUT_MS": "default_exec_timeout_ms",
    "MAX_OUTPUT_BYTES": "max_output_bytes",
    "MAX_UPLOAD_BYTES": "max_upload_bytes",
    "MAX_UPLOAD_UNCOMPRESSED_BYTES": "max_upload_uncompressed_bytes",
    "MAX_UPLOAD_ENTRIES": "max_upload_entries",
    "MAX_DOWNLOAD_BYTES": "max_download_bytes",
    "MAX_DISK_SIZE_MB": "max_disk_size_mb",
    "DISK_BUDGET_MB": "disk_budget_mb",
    "DISK_RESERVE_MB": "disk_reserve_mb",
    "MAX_SNAPSHOTS": "max_snapshots",
    "VM_DEFAULT_TTL_S": "vm_default_ttl_s",
    "VM_MAX_TTL_S": "vm_max_ttl_s",
    "EXEC_LOG_PER_VM": "exec_log_per_vm",
    "EXEC_LOG_MAX_AGE_S": "exec_log_max_age_s",
    "MAX_IMAGES": "max_images",
    "IMAGE_BUILD_TIMEOUT_S": "image_build_timeout_s",
    "MAX_IMAGE_BUILD_TIMEOUT_S": "max_image_build_timeout_s",
    "MAX_IMAGE_UPLOAD_MB": "max_image_upload_mb",
    "IMAGE_UPLOAD_WAIT_S": "image_upload_wait_s",
    "EVENTS_MAX_AGE_S": "events_max_age_s",
    "WEBHOOK_TIMEOUT_S": "webhook_timeout_s",
    "WEBHOOK_RETRY_BASE_S": "webhook_retry_base_s",
    "WEBHOOK_RETRY_MAX_S": "webhook_retry_max_s",
    "WEBHOOK_RETRY_FOR_S": "webhook_retry_for_s",
    "WEBHOOK_PARALLEL": "webhook_parallel",
    "STORAGE_ROOT": "storage_root",
    "TEMPLATES_DIR": "templates_dir",
    "DEFAULT_IMAGE_ID": "default_image_id",
    "LIBVIRT_URI": "libvirt_uri",
    "ACCELERATOR": "accelerator",
    "NETWORK_NAME": "network_name",
    "NETWORK_BRIDGE": "network_bridge",
    "NETWORK_CIDR": "network_cidr",
    "NETWORK_MODE": "network_mode",
    "EGRESS_NEVER_CIDRS": "egress_never_cidrs",
    "BOOT_TIMEOUT_S": "boot_timeout_s",
    "STOP_TIMEOUT_S": "stop_timeout_s",
    "LIBVIRT_TIMEOUT_S": "libvirt_timeout_s",
    "SSH_CONNECT_TIMEOUT_S": "ssh_connect_timeout_s",
    "SSH_AUTH_TIMEOUT_S": "ssh_auth_timeout_s",
    "SSH_CHANNEL_TIMEOUT_S": "ssh_channel_timeout_s",
    "LOG_LEVEL": "log_level",
    "LOG_FORMAT": "log_format",
    "METRICS_PUBLIC": "metrics_public",
    "TRUSTED_PROXIES": "trusted_proxies",
    "WEB_THREADS": "web_threads",
    "LONG_CALL_SLOTS": "long_call_slots",
    "SESSION_IDLE_TIMEOUT_S": "session_idle_timeout_s",
    "SESSION_MAX_AGE_S": "session_max_age_s",
    "LOGIN_MAX_FAILURES": "login_max_failures",
    "LOGIN_FAILURE_WINDOW_S": "login_failure_window_s",
    "LOGIN_MAX_LOCKOUT_S": "login_max_lockout_s",
    "SNAPSHOT_SHAPES": "snapshot_shapes",
    "SNAPSHOT_AUTO_BUILD": "snapshot_auto_build",
    "ENABLE_WARM_POOL": "enable_warm_pool",
    "WARM_POOL_TARGET": "warm_pool_target",
    "WARM_POOL_MAX_VMS": "warm_pool_max_vms",
    "WARM_POOL_SHAPES": "warm_pool_shapes",
    # Several hosts
    "HOSTS": "hosts",
    "HOST_PROBE_TIMEOUT_S": "host_probe_timeout_s",
    "PLACEMENT": "placement",
}
FIELD_FOR_KEY = {field.name: field for field in dataclasses.fields(Settings)}


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"1x256,2x512"`` → ``((1, 256), (2, 512))``; an empty string means none.

    :raises ValueError: for an entry that is not ``CPUxMEM_MB`` with positive numbers.
    """
    shapes = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        cpu, sep, mem = entry.lower().partition("x")
        if not sep or not cpu.isdigit() or not mem.isdigit() or int(cpu) < 1 or int(mem) < 128:
            raise ValueError(f"{entry!r} is not CPUxMEM_MB (e.g. 1x256)")
        shapes.append((int(cpu), int(mem)))
    return tuple(shapes)


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the service to this machine (``127.0.0.1``,
    ``::1``, ``[::1]``, ``localhost``); anything else, names included, counts as reachable."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")
