"""The Hypervisor adapter against libvirt's own test driver (as virt-manager's tests do): a
private ``test:///<node.xml>`` per test, so no test sees another's domains. Needs
libvirt-python; without it these tests are skipped, not passed."""
from __future__ import annotations

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed here")

from app.errors import HypervisorError, VmNotFound
from app.virt.connection import Hypervisor
from app.virt.metadata_xml import METADATA_NS, METADATA_PREFIX, metadata_xml, parse_metadata
from tests.unit.fakes import record

NODE = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
    <active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>8388608</memory>
</node>
"""


@pytest.fixture
def hypervisor(tmp_path) -> Hypervisor:
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    return Hypervisor(f"test://{node}", timeout=5)


def domain(vm_id: str, name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{vm_id}</uuid>"
            f"<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
            f"</domain>")


def test_a_domain_goes_through_its_lifecycle(hypervisor):
    vm = record(1)
    hypervisor.define_domain(domain(vm.id, vm.name))
    assert [(d.name, d.state) for d in hypervisor.list_domains()] == [(vm.name, "shutoff")]
    assert hypervisor.domain_name_exists(vm.name)
    hypervisor.start_domain(vm.id)
    assert hypervisor.get_domain(vm.id).state == "running"
    hypervisor.set_metadata(vm.id, metadata_xml(vm), METADATA_NS, METADATA_PREFIX)
    assert parse_metadata(hypervisor.get_domain(vm.id).xml) == vm
    hypervisor.set_title(vm.id, "run-dat-sheesh default")
    hypervisor.destroy_domain(vm.id)
    assert hypervisor.get_domain(vm.id).state == "shutoff"
    hypervisor.destroy_domain(vm.id)  # not running: left as it is
    hypervisor.undefine_domain(vm.id)
    with pytest.raises(VmNotFound):
        hypervisor.get_domain(vm.id)
    assert not hypervisor.domain_name_exists(vm.name)


def test_only_this_services_domains_are_listed(hypervisor):
    hypervisor.define_domain(domain("11111111-2222-4333-8444-555555555555", "someone-elses"))
    vm = record(2)
    hypervisor.define_domain(domain(vm.id, vm.name))
    assert [d.name for d in hypervisor.list_domains()] == [vm.name]


def test_libvirt_errors_come_out_translated(hypervisor):
    with pytest.raises(VmNotFound):
        hypervisor.start_domain("00000000-0000-4000-8000-000000000000")
    with pytest.raises(HypervisorError, match="not supported"):
        hypervisor.define_filter("<filter name='rds-x' chain='root'/>")  # no nwfilter here


def test_the_version_and_networks_are_read(hypervisor):
    assert hypervisor.ping().count(".") == 2
    assert hypervisor.network_is_active("no-such-network") is False


def test_a_lost_connection_waits_for_libvirtd_to_come_back(hypervisor, monkeypatch):
    """libvirtd restarting is unreachable for a few seconds: within the reconnect window a call
    waits for it (the undo of a create it interrupted must not fail); outside it, a dead
    libvirtd fails the call at once."""
    import libvirt

    from app.virt import connection

    real_open = libvirt.open
    refusals = []

    def restarting(uri):
        if len(refusals) < 3:
            refusals.append(uri)
            raise libvirt.libvirtError("Failed to connect socket: No such file or directory")
        return real_open(uri)

    monkeypatch.setattr(connection, "RECONNECT_INTERVAL_S", 0.01)
    monkeypatch.setattr(libvirt, "open", restarting)
    with pytest.raises(HypervisorError):  # never connected: nothing to wait for
        hypervisor.ping()
    refusals.clear()
    hypervisor._lost_at = connection.time.monotonic()  # as when a live connection died
    assert hypervisor.ping()
    assert len(refusals) == 3 and hypervisor._lost_at is None
    refusals.clear()
    hypervisor._conn = None
    hypervisor._lost_at = connection.time.monotonic() - connection.RECONNECT_WINDOW_S - 1
    with pytest.raises(HypervisorError):
        hypervisor.ping()
    assert len(refusals) == 1


def test_a_domain_that_stops_while_being_destroyed_is_off(hypervisor, monkeypatch):
    """isActive said yes, then destroy found it not running (QEMU died, or a restarted libvirtd
    cleaned up a restore it interrupted): off is what was asked for, not an error that keeps
    the create's undo from undefining the domain."""
    import libvirt

    class Stopping:
        def __init__(self):
            self.active = [True, False]

        def isActive(self):  # noqa: N802 - libvirt's name
            return self.active.pop(0) if self.active else False

        def destroyFlags(self, _flags):  # noqa: N802
            error = libvirt.libvirtError("Requested operation is not valid: domain is not "
                                         "running")
            error.err = (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU,
                         error.args[0], 2, "", None, None, 0, 0)
            raise error

    class Conn:
        def __init__(self):
            self.dom = Stopping()

        def lookupByUUIDString(self, _uuid):  # noqa: N802
            return self.dom

    conn = Conn()
    monkeypatch.setattr(hypervisor, "_connection", lambda: conn)
    hypervisor.destroy_domain("0b5c1a3e-2f4d-4c6b-9a8e-1d2c3b4a5f60")
    conn.dom.active = [True, True, True, True]  # still running: the error stands
    with pytest.raises(HypervisorError, match="not running"):
        hypervisor.destroy_domain("0b5c1a3e-2f4d-4c6b-9a8e-1d2c3b4a5f60")
