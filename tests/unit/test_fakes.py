"""Every fake in tests/unit/fakes.py against the real adapter it stands in for: the same
public methods with the same parameters, so unit tests cannot pass on calls the real one would
refuse. (The Hypervisor check needs libvirt-python; elsewhere it is skipped, not passed.)"""
from __future__ import annotations

import inspect

import pytest

from app.guestssh import GuestSSH
from app.virt import disks
from app.virt.ipsets import IpSets
from app.virt.taps import Taps
from tests.unit import fakes

TEST_HELPERS = {"add"}  # on FakeHypervisor: domains another process made


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls)
            if callable(member) and not name.startswith("_") and name not in TEST_HELPERS}


def parameters(signature: inspect.Signature) -> list[str]:
    return [name for name in signature.parameters if name != "self"]


def assert_same_interface(real: type, fake: type) -> None:
    real_methods, fake_methods = public_methods(real), public_methods(fake)
    assert set(fake_methods) == set(real_methods), (
        f"{fake.__name__} differs from {real.__name__}: missing "
        f"{sorted(set(real_methods) - set(fake_methods))}, extra "
        f"{sorted(set(fake_methods) - set(real_methods))}")
    for name, signature in real_methods.items():
        assert parameters(fake_methods[name]) == parameters(signature), (
            f"{fake.__name__}.{name}{fake_methods[name]} != {real.__name__}.{name}{signature}")


def test_fake_hypervisor_matches_the_real_one():
    pytest.importorskip("libvirt", reason="libvirt-python is not installed here")
    from app.virt.connection import Hypervisor
    assert_same_interface(Hypervisor, fakes.FakeHypervisor)


@pytest.mark.parametrize(("real", "fake"), [(IpSets, fakes.FakeIpSets),
                                            (Taps, fakes.FakeTaps)])
def test_fake_host_tools_match_the_real_ones(real, fake):
    assert_same_interface(real, fake)


def test_fake_guest_does_what_the_services_ask_of_guestssh():
    """FakeGuest covers the GuestSSH calls the services make (not its internals)."""
    used = {"run", "start", "open_stream", "wait_until_ready", "close"}
    real = public_methods(GuestSSH)
    fake = public_methods(fakes.FakeGuest)
    for name in used:
        assert parameters(fake[name]) == parameters(real[name]), name
    assert parameters(inspect.signature(fakes.FakeGuest.__init__)) == \
        parameters(inspect.signature(GuestSSH.__init__))


@pytest.mark.parametrize("name", ["create_overlay", "copy_image", "rebase", "check",
                                  "backing_file", "convert", "info"])
def test_fake_disks_match_the_disks_module(name):
    real = inspect.signature(getattr(disks, name))
    fake = inspect.signature(getattr(fakes.FakeDisks, name))
    assert parameters(fake) == parameters(real)
