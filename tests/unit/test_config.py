"""Settings: DEFAULTS → environment → overrides, validated at boot."""
from __future__ import annotations

import dataclasses
import ipaddress
import logging

import pytest

from app import create_app
from app.config import (DEV_API_KEY, DEV_SECRET, ENV_NAMES, ConfigError, Settings, is_loopback,
                        load_settings)

PRODUCTION = {"APP_ENV": "production", "API_KEY": "a-real-key", "ADMIN_PASSWORD": "s3cret-pw",
              "SESSION_SECRET": "x" * 32}


def test_defaults_without_environment():
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.api_key == DEV_API_KEY
    assert (settings.port, settings.max_vms, settings.max_cpu, settings.max_mem_mb) == (
        3000, 20, 4, 2048)
    assert settings.max_exec_timeout_ms == 120_000
    assert settings.gateway_ip == ipaddress.IPv4Address("172.16.0.1")
    assert not settings.is_production


def test_environment_overrides_are_coerced():
    settings = load_settings(environ={"MAX_VMS": "5", "BOOT_TIMEOUT_S": "1.5", "PORT": "8080",
                                      "API_KEY": "k", "NETWORK_MODE": "nat", "LOG_LEVEL": ""})
    assert settings.max_vms == 5 and isinstance(settings.max_vms, int)
    assert settings.boot_timeout_s == 1.5
    assert settings.port == 8080
    assert settings.api_key == "k"
    assert settings.network_mode == "nat"
    assert settings.log_level == "INFO"  # an empty variable counts as unset


def test_overrides_beat_environment_by_either_name():
    settings = load_settings(environ={"MAX_VMS": "5", "MAX_CPU": "2"},
                             overrides={"MAX_VMS": 7, "max_cpu": "3", "TESTING": True})
    assert (settings.max_vms, settings.max_cpu) == (7, 3)


@pytest.mark.parametrize("name", ["MAX_VMS", "PORT", "BOOT_TIMEOUT_S", "SSH_AUTH_TIMEOUT_S"])
def test_non_numeric_value_names_the_variable(name):
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={name: "abc"})


@pytest.mark.parametrize(("env", "named"), [
    ({"MAX_VMS": "0"}, "MAX_VMS"),
    ({"PORT": "70000"}, "PORT"),
    ({"MAX_MEM_MB": "64"}, "MAX_MEM_MB"),
    ({"BOOT_TIMEOUT_S": "0"}, "BOOT_TIMEOUT_S"),
    ({"APP_ENV": "staging"}, "APP_ENV"),
    ({"ACCELERATOR": "hvf"}, "ACCELERATOR"),
    ({"NETWORK_MODE": "bridge"}, "NETWORK_MODE"),
    ({"NETWORK_CIDR": "not-a-net"}, "NETWORK_CIDR"),
    ({"NETWORK_CIDR": "172.16.0.0/30"}, "NETWORK_CIDR"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
])
def test_invalid_values_are_refused(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=env)


@pytest.mark.parametrize("accelerator", ["auto", "kvm", "tcg"])
def test_known_accelerators(accelerator):
    assert load_settings(environ={"ACCELERATOR": accelerator}).accelerator == accelerator


@pytest.mark.parametrize(("missing", "named"), [
    ({"API_KEY": ""}, "API_KEY"),
    ({"API_KEY": DEV_API_KEY}, "API_KEY"),
    ({"SESSION_SECRET": ""}, "SESSION_SECRET"),
    ({"SESSION_SECRET": "dev-secret-change-me"}, "SESSION_SECRET"),
    ({"SESSION_SECRET": "too-short"}, "SESSION_SECRET"),
    ({"ADMIN_PASSWORD": ""}, "ADMIN_PASSWORD"),
    ({"ADMIN_PASSWORD": "admin"}, "ADMIN_PASSWORD"),
])
def test_production_refuses_default_secrets(missing, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ={**PRODUCTION, **missing})


def test_production_with_real_secrets_starts():
    settings = load_settings(environ=PRODUCTION)
    assert settings.is_production
    assert settings.api_key == "a-real-key"


def test_create_app_refuses_bad_config(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="MAX_VMS"):
        create_app({"TESTING": True, "MAX_VMS": "abc"})


# Development defaults on a reachable address ###############################################

REAL_SECRETS = {"API_KEY": "a-real-key", "ADMIN_PASSWORD": "s3cret-pw",
                "SESSION_SECRET": "x" * 32}
EXPOSURES = [
    ({"BIND_HOST": "0.0.0.0"}, "BIND_HOST=0.0.0.0"),
    ({"BIND_HOST": "::"}, "BIND_HOST=::"),
    ({"BIND_HOST": "192.168.1.5"}, "BIND_HOST=192.168.1.5"),
    ({"BIND_HOST": "sandbox.example.com"}, "BIND_HOST=sandbox.example.com"),
    ({"TRUSTED_PROXIES": "1"}, "TRUSTED_PROXIES=1"),
    ({"APP_ENV": "production"}, "APP_ENV=production"),
]


def test_bind_host_defaults_to_loopback_like_gunicorn():
    settings = load_settings(environ={})
    assert settings.bind_host == "127.0.0.1"
    assert settings.exposure == ""
    assert load_settings(environ={"BIND_HOST": "0.0.0.0", **REAL_SECRETS}).bind_host == "0.0.0.0"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("", False),
    ("example.com", False), ("127.0.0.1.nip.io", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("exposure", "reason"), EXPOSURES)
def test_exposed_service_refuses_every_development_default(exposure, reason):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=exposure)
    message = str(caught.value)
    for name in ("API_KEY", "ADMIN_PASSWORD", "SESSION_SECRET"):
        assert name in message
    assert reason in message
    assert DEV_API_KEY not in message and DEV_SECRET not in message


@pytest.mark.parametrize(("exposure", "reason"), EXPOSURES)
@pytest.mark.parametrize("left", ["API_KEY", "ADMIN_PASSWORD", "SESSION_SECRET"])
def test_exposed_service_refuses_any_one_default_left(exposure, reason, left):
    environ = {**exposure, **REAL_SECRETS}
    del environ[left]
    with pytest.raises(ConfigError, match=left) as caught:
        load_settings(environ=environ)
    others = {"API_KEY", "ADMIN_PASSWORD", "SESSION_SECRET"} - {left}
    assert not any(name in str(caught.value).split(":")[0] for name in others)


@pytest.mark.parametrize(("exposure", "reason"), EXPOSURES)
def test_exposed_service_with_real_secrets_starts(exposure, reason):
    settings = load_settings(environ={**exposure, **REAL_SECRETS})
    assert reason in settings.exposure
    assert settings.development_defaults == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_starts_with_development_defaults(host):
    settings = load_settings(environ={"BIND_HOST": host})
    assert settings.development_defaults == ["API_KEY", "ADMIN_PASSWORD", "SESSION_SECRET"]


def test_start_warns_naming_each_default_in_use(services, caplog):
    bundle = dataclasses.replace(services, settings=load_settings(environ={}))
    with caplog.at_level(logging.WARNING, logger="app"):
        create_app({"TESTING": True}, services=bundle)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("API_KEY", "ADMIN_PASSWORD", "SESSION_SECRET", "BIND_HOST=127.0.0.1"):
        assert name in warning
    for secret in (DEV_API_KEY, DEV_SECRET):
        assert secret not in warning


def test_start_warns_only_about_defaults_in_use(services, caplog):
    settings = load_settings(environ={"API_KEY": "k", "SESSION_SECRET": "s" * 20})
    with caplog.at_level(logging.WARNING, logger="app"):
        create_app({"TESTING": True}, services=dataclasses.replace(services, settings=settings))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "ADMIN_PASSWORD" in warning
    assert "API_KEY" not in warning and "SESSION_SECRET" not in warning


def test_no_warning_without_development_defaults(services, caplog):
    with caplog.at_level(logging.WARNING, logger="app"):
        create_app({"TESTING": True}, services=services)
    assert "DEVELOPMENT DEFAULTS" not in caplog.text
