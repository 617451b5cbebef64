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
    (hosts({**H2, "hostAddresses": "10.0.0.5"})["HOSTS"], "hostAddresses must be a list"),
    (hosts({**H2, "hostAddresses": {"eth1": "10.0.0.5"}})["HOSTS"],
     "hostAddresses must be a list of IPv4 addresses or networks, got dict"),
    (hosts({**H2, "hostAddresses": None})["HOSTS"], "got NoneType"),
    (hosts({**H2, "hostAddresses": [167772165]})["HOSTS"], "167772165 is not a string"),
    (hosts({**H2, "hostAddresses": [["10.0.0.5"]]})["HOSTS"], "is not a string"),
    (hosts({**H2, "hostAddresses": [True]})["HOSTS"], "True is not a string"),
    (hosts({**H2, "hostAddresses": ["fd00::1"]})["HOSTS"],
     "'fd00::1' is not an IPv4 address (10.1.2.3) or network"),
    (hosts({**H2, "hostAddresses": ["2001:db8::/32"]})["HOSTS"], "the filter passes IPv4 only"),
    (hosts({**H2, "hostAddresses": ["::ffff:10.0.0.5"]})["HOSTS"], "not an IPv4 address"),
    (hosts({**H2, "hostAddresses": ["banana"]})["HOSTS"], "'banana' is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": [""]})["HOSTS"], "'' is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": [" 10.0.0.5"]})["HOSTS"], "is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": ["10.0.0.256"]})["HOSTS"], "is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": ["010.0.0.5"]})["HOSTS"], "'010.0.0.5' is not an IPv4"),
    (hosts({**H2, "hostAddresses": ["h2.example"]})["HOSTS"], "is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": ["10.0.0.5/24"]})["HOSTS"], "no host bits set"),
    (hosts({**H2, "hostAddresses": ["x" * 100_000]})["HOSTS"],
     "hostAddresses: '" + "x" * 59 + "… is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": [{"address": "10.0.0.5"}]})["HOSTS"],
     "{'address': '10.0.0.5'} is not a string"),
    (hosts({**H2, "hostAddresses": ["10.0.0.0/33"]})["HOSTS"], "is not an IPv4 address"),
    (hosts({**H2, "hostAddresses": ["0.0.0.0/0"]})["HOSTS"], "is wider than /8"),
    (hosts({**H2, "hostAddresses": ["10.0.0.0/7"]})["HOSTS"], "is wider than /8"),
    (hosts({**H2, "hostAddresses": ["10.0.0.5", "10.0.0.5/32"]})["HOSTS"],
     "'10.0.0.5/32' is listed twice"),
    (hosts({**H2, "hostAddresses": [f"10.0.{i // 256}.{i % 256}" for i in range(65)]})["HOSTS"],
     "has 65 entries, at most 64"),
    (hosts({**H2, "hostAddresses": ["10.0.0.5"] * 100_000})["HOSTS"], "at most 64"),
])
def test_a_bad_hosts_value_stops_the_service_with_a_clear_message(value, message):
    with pytest.raises(ConfigError, match="HOSTS") as raised:
        load_settings(environ={"HOSTS": value})
    assert message in str(raised.value)


def test_host_addresses_are_kept_as_networks():
    entry = {**H2, "hostAddresses": ["192.0.2.10", "198.51.100.0/24", "10.0.0.0/8",
                                     "203.0.113.7/255.255.255.255"]}
    [host] = load_settings(environ=hosts(entry)).remote_hosts
    assert host.host_addresses == ("192.0.2.10/32", "198.51.100.0/24", "10.0.0.0/8",
                                   "203.0.113.7/32")
    [host] = load_settings(environ=hosts({**H2, "hostAddresses": []})).remote_hosts
    assert host.host_addresses == ()
    many = [f"10.0.0.{i}" for i in range(64)]
    [host] = load_settings(environ=hosts({**H2, "hostAddresses": many})).remote_hosts
    assert len(host.host_addresses) == 64


def test_a_bad_host_address_names_the_host_and_is_shown_short():
    with pytest.raises(ConfigError, match=r"host 'h2': hostAddresses: 'fd00::1'"):
        load_settings(environ=hosts({**H2, "hostAddresses": ["10.0.0.5", "fd00::1"]}))
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=hosts({**H2, "hostAddresses": ["9" * 100_000]}))
    assert len(str(raised.value)) < 400


@pytest.mark.parametrize("value", ["0", "-1", "61"])
def test_the_probe_timeout_is_bounded(value):
    with pytest.raises(ConfigError, match="HOST_PROBE_TIMEOUT_S"):
        load_settings(environ={"HOST_PROBE_TIMEOUT_S": value})
