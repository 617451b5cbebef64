"""Small pure helpers: addresses, accelerator choice, VM state mapping, error summaries."""
from __future__ import annotations

import ipaddress

import pytest

from app.errors import CapacityExhausted, HostBusy, _summarise
from app.models import VmPhase, VmState
from app.services.addresses import allocation_lock, mac_for, pick_address
from app.services.records import vm_state
from app.virt.accel import choose_domain_type

NET = ipaddress.IPv4Network("172.16.0.0/24")
GATEWAY = ipaddress.IPv4Address("172.16.0.1")
VMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme sse4_2 vmx avx2\n"
PLAIN_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme sse4_2 avx2 hypervisor\n"


# Addresses ################################################################################

def test_first_address_skips_network_and_gateway():
    assert pick_address(NET, GATEWAY, []) == ipaddress.IPv4Address("172.16.0.2")


def test_lowest_free_address_fills_gaps():
    taken = ["172.16.0.2", "172.16.0.4", ""]
    assert pick_address(NET, GATEWAY, taken) == ipaddress.IPv4Address("172.16.0.3")


def test_gateway_is_skipped_wherever_it_is():
    net = ipaddress.IPv4Network("10.0.0.0/29")
    assert pick_address(net, ipaddress.IPv4Address("10.0.0.2"), ["10.0.0.1"]) == (
        ipaddress.IPv4Address("10.0.0.3"))


def test_full_network_raises_capacity_exhausted():
    net = ipaddress.IPv4Network("10.0.0.0/29")  # hosts .1-.6, .1 the gateway
    taken = [f"10.0.0.{i}" for i in range(2, 7)]
    with pytest.raises(CapacityExhausted, match="10.0.0.0/29"):
        pick_address(net, ipaddress.IPv4Address("10.0.0.1"), taken)
    assert pick_address(net, ipaddress.IPv4Address("10.0.0.1"), taken[:-1]) == (
        ipaddress.IPv4Address("10.0.0.6"))


def test_mac_is_derived_from_the_address():
    assert mac_for(ipaddress.IPv4Address("172.16.0.2")) == "52:54:00:10:00:02"
    assert mac_for(ipaddress.IPv4Address("10.1.2.255")) == "52:54:00:01:02:ff"


def test_macs_are_unique_across_a_large_network():
    hosts = list(ipaddress.IPv4Network("10.8.0.0/16").hosts())
    assert len({mac_for(ip) for ip in hosts}) == len(hosts)


def test_allocation_lock_times_out_while_held(tmp_path):
    lock = tmp_path / "locks" / "allocation.lock"
    with allocation_lock(lock, timeout=1.0), pytest.raises(HostBusy, match="busy"), \
            allocation_lock(lock, timeout=0.1):
        pass
    with allocation_lock(lock, timeout=0.1):
        pass  # released again


# Accelerator ##############################################################################

@pytest.fixture
def host(tmp_path):
    """Writes a fake /proc/cpuinfo and, optionally, an openable /dev/kvm."""

    def make(cpuinfo: str | None, kvm: bool) -> dict[str, str]:
        cpu_path, kvm_path = tmp_path / "cpuinfo", tmp_path / "kvm"
        if cpuinfo is not None:
            cpu_path.write_text(cpuinfo)
        if kvm:
            kvm_path.write_text("")
        return {"cpuinfo_path": str(cpu_path), "kvm_path": str(kvm_path)}

    return make


@pytest.mark.parametrize(("cpuinfo", "kvm", "expected"), [
    (VMX_CPUINFO, True, "kvm"),
    (VMX_CPUINFO.replace("vmx", "svm"), True, "kvm"),
    (VMX_CPUINFO, False, "qemu"),       # no usable /dev/kvm
    (PLAIN_CPUINFO, True, "qemu"),      # /dev/kvm but no vmx/svm: a PVM host
    (None, True, "qemu"),               # unreadable cpuinfo
    ("model name\t: vmx-lookalike\nflags\t\t: fpu\n", True, "qemu"),
])
def test_auto_needs_cpu_flag_and_kvm_device(host, cpuinfo, kvm, expected):
    assert choose_domain_type("auto", **host(cpuinfo, kvm)) == expected


@pytest.mark.parametrize(("setting", "expected"), [("kvm", "kvm"), ("tcg", "qemu")])
def test_explicit_setting_wins_over_the_host(host, setting, expected):
    assert choose_domain_type(setting, **host(None, False)) == expected
    assert choose_domain_type(setting, **host(VMX_CPUINFO, True)) == expected


# VM state #################################################################################

@pytest.mark.parametrize(("domain_state", "phase", "expected"), [
    ("running", VmPhase.READY, VmState.RUNNING),
    ("running", VmPhase.STARTING, VmState.STARTING),
    ("running", VmPhase.STOPPING, VmState.STOPPING),
    ("shutoff", VmPhase.READY, VmState.STOPPED),
    ("shutoff", VmPhase.STARTING, VmState.STOPPED),
    ("shutdown", VmPhase.STOPPING, VmState.STOPPING),
    ("shutdown", VmPhase.READY, VmState.STOPPING),
    ("paused", VmPhase.READY, VmState.ERROR),
    ("crashed", VmPhase.READY, VmState.ERROR),
    ("nostate", VmPhase.STARTING, VmState.ERROR),
])
def test_vm_state(domain_state, phase, expected):
    assert vm_state(domain_state, phase) is expected


# Error summaries ##########################################################################

@pytest.mark.parametrize(("messages", "expected"), [
    ({"json": {"cpu": ["Missing data for required field."]}},
     "cpu: Missing data for required field."),
    ({"json": {"cpu": ["Not a valid integer."], "memMb": ["Too small.", "Really."]}},
     "cpu: Not a valid integer.; memMb: Too small. Really."),
    ({"json": ["Invalid JSON body."]}, "Invalid JSON body."),
    ({"json": {"allowIps": {"1": ["Not a valid string."]}}},
     "allowIps.1: Not a valid string."),
    ({"query": {"dest": ["Bad."]}, "headers": {"x": ["Odd."]}}, "dest: Bad.; x: Odd."),
    ({"json": {"env": [{"K": ["Bad."]}]}}, "env[0].K: Bad."),
    ({"json": {"cpu": 3}}, "cpu: 3"),
    ({}, "validation failed"),
    (None, "validation failed"),
])
def test_summarise(messages, expected):
    assert _summarise(messages) == expected


def test_deno_program_is_the_code_as_written_or_an_import_of_the_path():
    from app.services.commands import deno_program
    code = "#!/usr/bin/env -S deno run\nconsole.log(1)\nthrow new Error('x')"
    assert deno_program(code, None) == code  # the runner is preloaded: nothing added
    path = deno_program(None, "/workspace/my dir/a.ts")
    assert path == 'await import("file:///workspace/my%20dir/a.ts");\n'


def test_warm_deno_key_names_the_flags_unless_deno_reads_the_env_at_start():
    from app.services.commands import warm_deno_key
    flags = ["--quiet", "--no-prompt", "--allow-env=A"]
    key = warm_deno_key(flags, [], {"A": "1"})
    assert len(key) == 16 and key == warm_deno_key(list(flags), [], {"A": "other value"})
    assert key != warm_deno_key([*flags, "--allow-net"], [], {"A": "1"})
    assert warm_deno_key(flags, [], {"DENO_V8_FLAGS": "--max-old-space-size=64"}) == ""
    assert warm_deno_key(flags, [], {"NO_COLOR": "1"}) == ""
    assert warm_deno_key([*flags, "--seed=1"], ["--seed=1"], {}) != ""
    assert warm_deno_key([*flags, "--check"], ["--check"], {}) == ""


def test_a_load_error_becomes_the_error_when_the_runner_never_ran():
    from app.models import CommandResult
    from app.services.outcome import split_outcome
    failed = CommandResult(exit_code=1, stdout=b"", stderr=b"error: SyntaxError: Unexpected token\n"
                           b"  at file:///workspace/$deno$stdin.ts:1:9\n", timed_out=False,
                           duration_ms=5)
    assert split_outcome(failed, b"\x1etok").outcome == {
        "error": {"name": "SyntaxError", "message": "Unexpected token", "stack": ""}}
    killed = CommandResult(exit_code=-1, stdout=b"", stderr=b"error: x\n", timed_out=True,
                           duration_ms=5)
    assert split_outcome(killed, b"\x1etok").outcome == {}


@pytest.mark.parametrize("flag, warm", [
    ("--unstable-kv", True), ("--unstable", True), ("--v8-flags=--max-old-space-size=64", True),
    ("--seed=7", True), ("--location=https://example.test/", True),
    ("--check", False), ("--watch", False), ("--reload", False), ("--lock=deno.lock", False),
])
def test_only_runtime_deno_flags_may_use_a_warm_deno(flag, warm):
    from app.services.deno_run import WARM_DENO_FLAGS
    assert bool(WARM_DENO_FLAGS.match(flag)) is warm
