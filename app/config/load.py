"""Reading settings: defaults, then the environment, then a test mapping; validated at boot."""
from __future__ import annotations

import ipaddress
import os
import typing as t

from app.config.hosts import PLACEMENTS, HostsError, parse_hosts
from app.config.settings import (ENV_NAMES, FIELD_FOR_KEY, MIN_SECRET_LENGTH, ConfigError,
                                 Settings, parse_shapes)


def _coerce(name: str, raw: t.Any) -> t.Any:
    field = FIELD_FOR_KEY[name]
    kind = field.type
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name.upper()} must be a number, got {raw!r}") from None
    return str(raw)


def load_settings(environ: t.Mapping[str, str] | None = None,
                  overrides: t.Mapping[str, t.Any] | None = None) -> Settings:
    """Build validated settings.

    :param environ: environment variables (``os.environ`` when None).
    :param overrides: settings by field name (``max_vms``) or env name (``MAX_VMS``); tests use it.
    :raises ConfigError: when a value is invalid.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, t.Any] = {}
    for env_name, field_name in ENV_NAMES.items():
        if env_name in environ and environ[env_name] != "":
            values[field_name] = _coerce(field_name, environ[env_name])
    for key, value in (overrides or {}).items():
        field_name = ENV_NAMES.get(key, key)
        if field_name in FIELD_FOR_KEY:
            values[field_name] = _coerce(field_name, value)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """:raises ConfigError: naming the first bad setting."""
    if settings.app_env not in ("development", "production"):
        raise ConfigError("APP_ENV must be 'development' or 'production'")
    _refuse_exposed_defaults(settings)
    if not settings.api_key:
        raise ConfigError("API_KEY must not be empty")
    for name in ("port", "max_vms", "max_cpu", "max_mem_mb", "max_exec_timeout_ms",
                 "default_exec_timeout_ms", "max_output_bytes", "max_upload_bytes",
                 "max_upload_uncompressed_bytes", "max_upload_entries", "max_download_bytes",
                 "session_idle_timeout_s", "session_max_age_s", "login_max_failures",
                 "login_failure_window_s", "login_max_lockout_s", "exec_log_per_vm",
                 "exec_log_max_age_s", "image_build_timeout_s", "max_image_build_timeout_s",
                 "max_image_upload_mb", "image_upload_wait_s", "events_max_age_s"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.upper()} must be at least 1")
    for name in ("disk_budget_mb", "disk_reserve_mb", "max_snapshots", "vm_default_ttl_s",
                 "vm_max_ttl_s", "max_images"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name.upper()} must not be negative")
    if settings.vm_max_ttl_s and not 0 < settings.vm_default_ttl_s <= settings.vm_max_ttl_s:
        raise ConfigError("VM_DEFAULT_TTL_S must be between 1 and VM_MAX_TTL_S when "
                          "VM_MAX_TTL_S is set (every VM then has a lifetime)")
    if settings.web_threads < 1 or settings.long_call_slots < 0:
        raise ConfigError("WEB_THREADS must be at least 1 and LONG_CALL_SLOTS not negative")
    if settings.long_call_slots >= settings.web_threads:
        raise ConfigError("LONG_CALL_SLOTS must be below WEB_THREADS (threads must stay free "
                          "for health checks and reads)")
    if settings.max_disk_size_mb < 1:
        raise ConfigError("MAX_DISK_SIZE_MB must be at least 1")
    if settings.image_build_timeout_s > settings.max_image_build_timeout_s:
        raise ConfigError("IMAGE_BUILD_TIMEOUT_S must not exceed MAX_IMAGE_BUILD_TIMEOUT_S")
    if settings.default_exec_timeout_ms > settings.max_exec_timeout_ms:
        raise ConfigError("DEFAULT_EXEC_TIMEOUT_MS must not exceed MAX_EXEC_TIMEOUT_MS")
    if not 1 <= settings.port <= 65535:
        raise ConfigError("PORT must be between 1 and 65535")
    if settings.max_mem_mb < 128:
        raise ConfigError("MAX_MEM_MB must be at least 128")
    _validate_host(settings)
    _validate_webhooks(settings)
    _validate_hosts(settings)


def _validate_webhooks(settings: Settings) -> None:
    for name in ("webhook_timeout_s", "webhook_retry_base_s", "webhook_retry_max_s",
                 "webhook_retry_for_s"):
        if not 0 < getattr(settings, name) <= 7 * 24 * 3600:
            raise ConfigError(f"{name.upper()} must be positive and at most a week")
    if settings.webhook_retry_max_s < settings.webhook_retry_base_s:
        raise ConfigError("WEBHOOK_RETRY_MAX_S must not be below WEBHOOK_RETRY_BASE_S")
    if not 1 <= settings.webhook_parallel <= 64:
        raise ConfigError("WEBHOOK_PARALLEL must be between 1 and 64")


def _validate_hosts(settings: Settings) -> None:
    """HOSTS (the libvirt hosts besides the local one) and how long they are waited for."""
    if not 0 < settings.host_probe_timeout_s <= 60:
        raise ConfigError("HOST_PROBE_TIMEOUT_S must be positive and at most 60")
    if settings.placement not in PLACEMENTS:
        raise ConfigError(f"PLACEMENT must be one of {', '.join(PLACEMENTS)}")
    try:
        parse_hosts(settings.hosts, settings.libvirt_uri, settings.network_cidr)
    except HostsError as exc:
        raise ConfigError(f"HOSTS: {exc}") from None


def _validate_host(settings: Settings) -> None:
    """Hypervisor, network, timeouts, fast create and logging."""
    if settings.accelerator not in ("auto", "kvm", "tcg"):
        raise ConfigError("ACCELERATOR must be one of auto, kvm, tcg")
    if settings.network_mode not in ("isolated", "nat"):
        raise ConfigError("NETWORK_MODE must be 'isolated' or 'nat'")
    try:
        network = ipaddress.IPv4Network(settings.network_cidr)
    except ValueError as exc:
        raise ConfigError(f"NETWORK_CIDR is not an IPv4 network: {exc}") from None
    if network.prefixlen > 29:
        raise ConfigError("NETWORK_CIDR must have room for guests (at most /29)")
    for entry in settings.egress_never_list:
        try:
            ipaddress.IPv4Network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"EGRESS_NEVER_CIDRS: {entry!r} is not an IPv4 CIDR") from None
    for name in ("boot_timeout_s", "stop_timeout_s", "libvirt_timeout_s",
                 "ssh_connect_timeout_s", "ssh_auth_timeout_s", "ssh_channel_timeout_s"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name.upper()} must be positive")
    for name in ("snapshot_shapes", "warm_pool_shapes"):
        try:
            parse_shapes(getattr(settings, name))
        except ValueError as exc:
            raise ConfigError(f"{name.upper()}: {exc}") from None
    if settings.log_format not in ("text", "json"):
        raise ConfigError("LOG_FORMAT must be 'text' or 'json'")
    for name in ("snapshot_auto_build", "enable_warm_pool", "metrics_public"):
        if getattr(settings, name).strip().lower() not in ("1", "0", "true", "false", "yes",
                                                           "no", "on", "off"):
            raise ConfigError(f"{name.upper()} must be true or false")
    if settings.warm_pool_target < 0 or settings.warm_pool_max_vms < 0:
        raise ConfigError("WARM_POOL_TARGET and WARM_POOL_MAX_VMS must not be negative")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")


def _refuse_exposed_defaults(settings: Settings) -> None:
    """A service others can reach must not run on the public development secrets: anyone
    could log in as admin/admin, call the API with ``dev-key`` or forge a session cookie.

    :raises ConfigError: naming every secret to set, and why the service counts as exposed.
    """
    exposure = settings.exposure
    if not exposure:
        return
    defaults = settings.development_defaults
    if defaults:
        raise ConfigError(
            f"{', '.join(defaults)} must be set to non-default values: the service is "
            f"reachable from other hosts ({exposure}) and the development defaults are "
            f"public. Generate each with: openssl rand -hex 32 (or listen on "
            f"BIND_HOST=127.0.0.1 without TRUSTED_PROXIES for local development)")
    if len(settings.secret_key) < MIN_SECRET_LENGTH:
        raise ConfigError(f"SESSION_SECRET must be at least {MIN_SECRET_LENGTH} characters "
                          f"when the service is reachable from other hosts ({exposure})")
