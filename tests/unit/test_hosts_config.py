"""HOSTS: the remote libvirt hosts, parsed and checked at boot (app/config/hosts.py)."""
from __future__ import annotations

import json

import pytest

from app.config import ConfigError, load_settings
from app.config.hosts import DEFAULT_IMAGES_DIR, RemoteHost

H2 = {"name": "h2", "uri": "qemu+tcp://10.210.0.2/system", "guestCidr": "172.16.1.0/24"}


def hosts(*entries: dict) -> dict[str, str]:
    return {"HOSTS": json.dumps(list(entries))}


def test_no_hosts_is_the_local_host_alone():
    assert load_settings(environ={}).remote_hosts == ()
    assert load_settings(environ={"HOSTS": "  "}).remote_hosts == ()


def test_an_entry_with_its_defaults():
    [host] = load_settings(environ=hosts(H2)).remote_hosts
    assert host == RemoteHost(name="h2", uri="qemu+tcp://10.210.0.2/system",
                              guest_cidr="172.16.1.0/24", reach="route", max_vms=None,
                              images_dir=DEFAULT_IMAGES_DIR)


def test_every_key():
    entry = {**H2, "reach": "route", "maxVms": 7, "imagesDir": "/srv/rds-images"}
    third = {"name": "rack-3", "uri": "qemu+ssh://root@h3/system",
             "guestCidr": "172.16.2.0/24"}
    found = load_settings(environ=hosts(entry, third)).remote_hosts
    assert [(h.name, h.max_vms, h.images_dir) for h in found] == [
        ("h2", 7, "/srv/rds-images"), ("rack-3", None, DEFAULT_IMAGES_DIR)]


@pytest.mark.parametrize(("value", "message"), [
    ("h2=qemu://x", "not JSON"),
    ('{"name": "h2"}', "must be a JSON list"),
    ('["h2"]', "entry 1 is not an object"),
    (hosts({**H2, "name": "H2"})["HOSTS"], "name must be 1-32 characters"),
    (hosts({**H2, "name": "2nd"})["HOSTS"], "starting with a letter"),
    (hosts({**H2, "name": "a" * 33})["HOSTS"], "name must be"),
    (hosts({**H2, "name": "local"})["HOSTS"], "the name is taken"),
    (hosts(H2, {**H2, "uri": "qemu+tcp://other/system",
                "guestCidr": "172.16.2.0/24"})["HOSTS"], "the name is taken"),
    (hosts(H2, {**H2, "name": "h3", "guestCidr": "172.16.2.0/24"})["HOSTS"],
     "is already a host"),
    (hosts({**H2, "uri": "qemu:///system"})["HOSTS"], "is already a host"),  # LIBVIRT_URI
    (hosts({**H2, "uri": "not a uri"})["HOSTS"], "uri must be a libvirt URI"),
    (hosts({k: v for k, v in H2.items() if k != "uri"})["HOSTS"], "uri must be"),
    (hosts({k: v for k, v in H2.items() if k != "guestCidr"})["HOSTS"], "guestCidr"),
    (hosts({**H2, "guestCidr": "172.16.1.0/30"})["HOSTS"], "room for guests"),
    (hosts({**H2, "guestCidr": "banana"})["HOSTS"], "not an IPv4 network"),
    (hosts({**H2, "guestCidr": "172.16.0.128/25"})["HOSTS"], "overlaps local's"),
    (hosts(H2, {**H2, "name": "h3", "uri": "qemu+tcp://h3/system",
                "guestCidr": "172.16.0.0/16"})["HOSTS"], "overlaps"),
    (hosts({**H2, "reach": "tunnel"})["HOSTS"], "reach must be one of route"),
    (hosts({**H2, "maxVms": 0})["HOSTS"], "maxVms must be"),
    (hosts({**H2, "maxVms": "3"})["HOSTS"], "maxVms must be"),
    (hosts({**H2, "imagesDir": "relative"})["HOSTS"], "imagesDir must be"),
    (hosts({**H2, "imagesDir": "/var/lib/libvirt/images/"})["HOSTS"], "imagesDir must be"),
    (hosts({**H2, "cidr": "172.16.1.0/24"})["HOSTS"], "unknown keys ['cidr']"),
])
def test_a_bad_hosts_value_stops_the_service_with_a_clear_message(value, message):
    with pytest.raises(ConfigError, match="HOSTS") as raised:
        load_settings(environ={"HOSTS": value})
    assert message in str(raised.value)


@pytest.mark.parametrize("value", ["0", "-1", "61"])
def test_the_probe_timeout_is_bounded(value):
    with pytest.raises(ConfigError, match="HOST_PROBE_TIMEOUT_S"):
        load_settings(environ={"HOST_PROBE_TIMEOUT_S": value})
