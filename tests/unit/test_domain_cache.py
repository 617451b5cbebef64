"""What a connection keeps about its domains (app/virt/domain_cache.py): kept until libvirt
says a domain changed, this process changes one, or the connection goes."""
from __future__ import annotations

import concurrent.futures
import time

import pytest

from app.models import DomainInfo
from app.virt.domain_cache import DomainCache

RUNNING = DomainInfo(uuid="u1", name="rds-a", state="running", xml="<vm/>")
STOPPED = DomainInfo(uuid="u1", name="rds-a", state="shutoff", xml="<vm/>")


def started(**kwargs) -> DomainCache:
    cache = DomainCache(**kwargs)
    cache.start()
    return cache


def test_an_answer_is_kept_until_its_domain_changes():
    cache = started()
    cache.put("u1", RUNNING, cache.generation)
    assert cache.get("u1") is RUNNING
    cache.invalidate("u1")
    assert cache.get("u1") is None


def test_nothing_is_kept_before_start_or_after_stop():
    cache = DomainCache()
    cache.put("u1", RUNNING, cache.generation)
    assert cache.get("u1") is None
    cache.start()
    cache.put("u1", RUNNING, cache.generation)
    cache.stop()
    assert cache.get("u1") is None
    cache.put("u1", RUNNING, cache.generation)
    assert cache.get("u1") is None


@pytest.mark.parametrize("change", [lambda c: c.invalidate("u1"), lambda c: c.invalidate("u2"),
                                    DomainCache.clear, DomainCache.stop])
def test_an_answer_read_while_something_changed_is_not_kept(change):
    """A lookup that raced a change (its answer may be the state before it) cannot put the
    old state back after the change dropped it."""
    cache = started()
    generation = cache.generation  # the lookup starts
    change(cache)  # an event, this process's change, or the connection going
    cache.put("u1", RUNNING, generation)  # the lookup's (maybe old) answer
    cache.start() if change is DomainCache.stop else None
    assert cache.get("u1") is None


def test_answers_expire():
    now = [100.0]
    cache = started(max_age_s=10, clock=lambda: now[0])
    cache.put("u1", RUNNING, cache.generation)
    now[0] += 9
    assert cache.get("u1") is RUNNING
    now[0] += 2
    assert cache.get("u1") is None


def test_a_call_that_may_change_a_domain_drops_everything_before_and_after():
    """The connection hands every call through :meth:`DomainCache.around`: this process's own
    change is seen at once, and an answer read while it ran is not kept."""
    cache = started()
    cache.put("u1", RUNNING, cache.generation)
    future = concurrent.futures.Future()
    seen = []

    def submit():
        seen.append(cache.get("u1"))
        cache.put("u1", RUNNING, cache.generation)  # read while the call is out
        return future

    assert cache.around("start domain", submit) is future
    assert seen == [None] and cache.get("u1") is RUNNING
    future.set_result(None)
    assert cache.get("u1") is None


def test_a_read_only_call_drops_nothing():
    cache = started()
    cache.put("u1", RUNNING, cache.generation)
    generation = cache.generation
    future = concurrent.futures.Future()
    assert cache.around("get domain", lambda: future) is future
    future.set_result(None)
    assert cache.get("u1") is RUNNING and cache.generation == generation


libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed here")

from app.virt.connection import Hypervisor  # noqa: E402 - only with libvirt-python
from app.virt.metadata_xml import (METADATA_NS, METADATA_PREFIX, metadata_xml,  # noqa: E402
                                   parse_metadata)
from tests.unit.fakes import record  # noqa: E402
from tests.unit.test_libvirt_adapter import NODE, domain  # noqa: E402


def eventually(check, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "libvirt's event never came"
        time.sleep(0.02)


@pytest.fixture
def hypervisor(tmp_path):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    hypervisor = Hypervisor(f"test://{node}", timeout=5)
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def vm(hypervisor):
    vm = record(1)
    hypervisor.define_domain(domain(vm.id, vm.name))
    hypervisor.start_domain(vm.id)
    hypervisor.set_metadata(vm.id, metadata_xml(vm), METADATA_NS, METADATA_PREFIX)
    hypervisor.get_domain(vm.id)  # a round trip on the connection, then: the events of the
    eventually(lambda: settled(hypervisor))  # define, start and metadata change have come
    return vm


def settled(hypervisor: Hypervisor) -> bool:
    """Nothing dropped the cache for a while (an event still on its way would, later)."""
    generation = hypervisor.domains.generation
    time.sleep(0.3)
    return hypervisor.domains.generation == generation


def test_a_repeated_lookup_is_answered_without_libvirt(hypervisor, vm, monkeypatch):
    first = hypervisor.get_domain_cached(vm.id)
    assert first.state == "running" and parse_metadata(first.xml) == vm
    monkeypatch.setattr(hypervisor, "get_domain", lambda _uuid: pytest.fail("asked libvirt"))
    assert hypervisor.get_domain_cached(vm.id) == first


def test_this_processs_own_changes_are_seen_at_once(hypervisor, vm):
    hypervisor.get_domain_cached(vm.id)
    hypervisor.destroy_domain(vm.id)
    assert hypervisor.get_domain_cached(vm.id).state == "shutoff"
    hypervisor.start_domain(vm.id)
    changed = record(1, guest_ip="172.16.0.99")
    hypervisor.set_metadata(vm.id, metadata_xml(changed), METADATA_NS, METADATA_PREFIX)
    found = hypervisor.get_domain_cached(vm.id)
    assert found.state == "running" and parse_metadata(found.xml).guest_ip == "172.16.0.99"


def test_a_change_made_by_another_process_arrives_as_an_event(hypervisor, vm):
    """Another worker, manager or virsh: simulated with a second connection's calls, which this
    connection only learns of through libvirt's events."""
    assert hypervisor.get_domain_cached(vm.id).state == "running"
    generation = hypervisor.domains.generation
    # The test driver is private to its connection: the "other process" has to act through
    # this one, so the change is made by libvirt-python directly, around the Hypervisor's
    # own bookkeeping, as virsh's would be.
    conn = hypervisor._connection()
    conn.lookupByUUIDString(vm.id).destroy()
    eventually(lambda: hypervisor.domains.generation != generation)
    assert hypervisor.get_domain_cached(vm.id).state == "shutoff"
    conn.lookupByUUIDString(vm.id).create()
    eventually(lambda: hypervisor.get_domain_cached(vm.id).state == "running")
    generation = hypervisor.domains.generation
    changed = record(1, guest_ip="172.16.0.77")
    conn.lookupByUUIDString(vm.id).setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(changed), METADATA_PREFIX,
        METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    eventually(lambda: hypervisor.domains.generation != generation)
    assert parse_metadata(hypervisor.get_domain_cached(vm.id).xml).guest_ip == "172.16.0.77"


def test_a_lost_connection_keeps_nothing(hypervisor, vm):
    hypervisor.get_domain_cached(vm.id)
    hypervisor.close()
    assert hypervisor.domains.get(vm.id) is None
