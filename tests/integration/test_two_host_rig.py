"""The two-host rig (tests/integration/two_host_rig.py): a second libvirtd in its own network and
mount namespaces, reached over libvirt's remote driver, with its own guest network routed from
this host, and nothing of it shared with or left on this host."""
from __future__ import annotations

import socket
import subprocess
import time

import libvirt
import pytest

from app.virt.network_xml import build_network_xml
from tests.integration.conftest import virsh
from tests.integration.two_host_rig import SecondHost

PROBE_DOMAIN = """<domain type='qemu'>
  <name>rds-rig-probe</name>
  <title>run-dat-sheesh two-host rig: a guest of the second host</title>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <interface type='network'><source network='rds-net'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def second_host():
    with SecondHost() as host:
        yield host


@pytest.fixture(scope="module")
def remote(second_host):
    connection = libvirt.open(second_host.uri)
    yield connection
    connection.close()


def test_the_second_libvirtd_answers_the_remote_driver_on_its_veth_address_only(
        second_host, remote):
    assert remote.getURI() == second_host.uri
    assert remote.listAllDomains() == []
    listening = subprocess.run(second_host.in_namespace("ss", "-Hltn"), capture_output=True,
                               text=True, timeout=30, check=True).stdout
    sockets = {line.split()[3] for line in listening.splitlines()}
    assert f"{second_host.peer_address}:16509" in sockets
    assert not any(address.endswith(":16509") and address != f"{second_host.peer_address}:16509"
                   for address in sockets), sockets
    with pytest.raises(OSError):  # not on this host's loopback
        socket.create_connection(("127.0.0.1", 16509), timeout=2).close()


def test_it_shares_no_definition_with_this_host(second_host, remote):
    """Its own networks, pools and filters: this host's `rds-net`, `rds-images` and the
    VMs' filters are not there, and what is defined there does not appear here."""
    assert remote.listAllNetworks() == []
    assert remote.listAllStoragePools() == []
    assert not [f.name() for f in remote.listAllNWFilters() if f.name().startswith("rds-")]
    here = virsh("net-list", "--all", "--name").stdout.split()
    assert "rds-net" in here  # this host's, untouched


def test_a_guest_of_the_second_host_runs_on_its_own_bridge_routed_from_here(
        second_host, remote):
    network = remote.networkDefineXML(build_network_xml(
        "rds-net", second_host.bridge, second_host.guest_cidr, "isolated"))
    network.create()
    domain = remote.defineXML(PROBE_DOMAIN)
    try:
        domain.create()
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        links = subprocess.run(second_host.in_namespace("ip", "-o", "link", "show", "master",
                                                        second_host.bridge),
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert "vnet" in links, links  # the guest's tap is on the second host's bridge ...
        assert "rds-rig-probe" not in virsh("list", "--all", "--name").stdout  # not here
        host_links = subprocess.run(["ip", "-o", "link", "show", "master", "rds-br0"],
                                    capture_output=True, text=True, timeout=30).stdout
        assert "vnet" not in host_links  # ... and not on this host's
        # This host reaches the second host's guest subnet through the veth: a listener on
        # the second host's bridge address answers a connection made here.
        gateway = second_host.guest_cidr.rsplit(".", 1)[0] + ".1"
        server = subprocess.Popen(second_host.in_namespace(
            "python3", "-c", "import socket; s = socket.create_server(('%s', 8765)); "
            "c, _ = s.accept(); c.sendall(b'second host'); c.close()" % gateway))
        try:
            answer = _read_when_listening(gateway, 8765)
        finally:
            server.kill()
            server.wait(timeout=10)
        assert answer == b"second host"
    finally:
        if domain.isActive():
            domain.destroy()
        domain.undefine()
        network.destroy()
        network.undefine()


def test_stopping_the_rig_leaves_nothing(second_host):
    """The last test: stop it here and look (the fixture's stop after it does nothing)."""
    pid = second_host.daemon_pid("libvirtd")
    second_host.stop()
    assert pid is not None and not _alive(pid)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=30).stdout
    assert second_host.name not in names
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           timeout=30).stdout
    assert second_host.host_veth not in links
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, timeout=30).stdout
    assert second_host.guest_cidr not in routes
    assert not second_host.root.exists()
    assert virsh("version").returncode == 0  # this host's libvirtd still answers


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def _read_when_listening(host: str, port: int, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as connection:
                return connection.recv(100)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

