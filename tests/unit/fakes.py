"""One fake of each host adapter, and the real services built on them.

Unit tests run the real services (quotas, states, policies, rollback) over these fakes: no
libvirt, no root, no network. ``tests/unit/test_fakes.py`` checks every fake against the real
adapter's methods (names and parameters), so a fake cannot drift from what it stands in for.
"""
from __future__ import annotations

import dataclasses
import re
import threading
import time
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app.config import REPO_ROOT, Settings, load_settings
from app.errors import FilterNotFound, GuestUnreachable, HypervisorError, VmNotFound
from app.guestssh import SshTimeouts, check_command_line, check_environment
from app.guestssh.channels import collect
from app.models import (CommandResult, DomainInfo, NodeInfo, ProvisionMode, VmPhase, VmRecord,
                        VolumeTail)
from app.services.auth import AuthService
from app.services.container import Adapters, Services, build_services
from app.services.prelude import started_mark
from app.store.db import Store
from app.virt import save_image
from app.virt.metadata_xml import metadata_element, parse_metadata
from app.virt.network_xml import DhcpHost

API_KEY = "unit-test-key"
ADMIN_EMAIL = "admin@test.example"
ADMIN_PASSWORD = "unit-test-password"
MAX_VMS = 3
CSRF = {"X-Requested-With": "unit-test"}  # what a cookie-authenticated change must send
OLD_BUILD, NEW_BUILD = "0ld0ld0ld0ld0ld0", "4e34e34e34e34e34"


class FakeHypervisor:
    """libvirt in memory: domains (with their records), filters, bindings, the network and the
    guest agent. ``down`` makes every call fail as an unreachable libvirtd does; ``fail`` makes
    one call fail (by its name in ``calls``); ``calls`` lists the changes and guest-agent calls
    asked for, in order (not the reads)."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainInfo] = {}
        self.defined: list[str] = []
        self.filters: set[str] = set()
        self.filter_xml: dict[str, str] = {}  # the last XML each filter was defined with
        self.bindings: set[str] = set()
        self.calls: list[str] = []
        self.down: Exception | None = None
        self.fail: dict[str, Exception] = {}
        self.network_active = True
        self.networks: dict[str, str] = {}  # ensured networks: name -> XML
        self.dhcp: dict[str, list[DhcpHost]] = {}  # network -> its DHCP host entries
        self.before_add_dhcp_host: list[t.Callable[[], None]] = []  # one runs before each add
        self.frozen = False
        self.agent_exit = 0
        self.agent_statuses: list[int | None] = []  # guest_agent_status answers, then agent_exit
        self.agent_scripts: list[str] = []  # what guest_agent_spawn ran (bash -c SCRIPT)
        self.pools: dict[str, int] = {}  # storage pool -> refreshes
        self.volumes: dict[tuple[str, str], bytes] = {}  # (pool, volume) -> its bytes
        self.corrupt: set[str] = set()  # volumes whose stored bytes differ from those sent
        self.volume_mtimes: dict[tuple[str, str], float] = {}  # (pool, volume) -> its mtime
        self.timeout = 1.0
        self.pool_dirs: dict[str, str] = {}  # storage pool -> its directory
        self.stream_attempts = 1  # 2: a stream is broken half-way and sent again
        self.hang: threading.Event | None = None  # set: node_info waits for it (a hung host)
        self.version = "10.0.0"
        self.cpu_time_ns = 0  # a running domain's CPU time grows by 0.1 s per stats call
        self.restored: list[str] = []  # the XML of each save image restored
        self.channel_requests: list[tuple[str, str, bytes]] = []  # (uuid, channel, request)
        self.channel_reply = "ok"  # what the guest answers on a channel

    def _call(self, name: str, read: bool = False) -> None:
        if not read:
            self.calls.append(name)
        if self.down is not None:
            raise self.down
        if name in self.fail:
            raise self.fail[name]

    def _domain(self, uuid: str) -> DomainInfo:
        try:
            return self.domains[uuid]
        except KeyError:
            raise VmNotFound(f"Domain not found: no domain with matching uuid '{uuid}'") from None

    def _set_state(self, uuid: str, state: str) -> None:
        self.domains[uuid] = dataclasses.replace(self._domain(uuid), state=state)

    # Test helpers (not part of the Hypervisor) #############################################

    def add(self, record: VmRecord, state: str = "running") -> None:
        """A domain of this service that exists already (made by another process)."""
        self.domains[record.id] = DomainInfo(
            uuid=record.id, name=record.name, state=state, xml=domain_xml(record))

    # The Hypervisor's methods ##############################################################

    def close(self) -> None:
        pass

    def ping(self) -> str:
        self._call("ping", read=True)
        return self.version

    def emulator_version(self) -> str:
        self._call("emulator_version", read=True)
        return "7.2.0"

    def node_info(self) -> NodeInfo:
        self._call("node_info", read=True)
        if self.hang is not None:
            self.hang.wait(timeout=30)
        return NodeInfo(hostname="fake-host", cpus=2, memory_mb=24000, free_memory_mb=20000,
                        hypervisor_version="7.2.0")

    def list_domains(self) -> list[DomainInfo]:
        self._call("list_domains", read=True)
        return list(self.domains.values())

    def get_domain(self, uuid: str) -> DomainInfo:
        self._call("get_domain", read=True)
        return self._domain(uuid)

    def get_domain_cached(self, uuid: str) -> DomainInfo:
        """No cache here: the fakes change synchronously (the real one is tested in
        test_domain_cache.py)."""
        return self.get_domain(uuid)

    def domain_stats(self, uuid: str) -> dict[str, t.Any]:
        self._call("domain_stats", read=True)
        if self._domain(uuid).state != "running":
            return {"state.state": 5}
        self.cpu_time_ns += 100_000_000
        return {"state.state": 1, "cpu.time": self.cpu_time_ns, "vcpu.current": 1,
                "balloon.rss": 204_800, "block.count": 1, "block.0.rd.bytes": 4096,
                "block.0.wr.bytes": 8192, "block.0.rd.reqs": 1, "block.0.wr.reqs": 2,
                "net.count": 1, "net.0.rx.bytes": 100, "net.0.tx.bytes": 200,
                "net.0.rx.pkts": 3, "net.0.tx.pkts": 4}

    def domain_name_exists(self, name: str) -> bool:
        self._call("domain_name_exists", read=True)
        return any(info.name == name for info in self.domains.values())

    def define_domain(self, xml: str) -> None:
        self._call("define")
        self.defined.append(xml)
        record = parse_metadata(xml)
        assert record is not None, "a domain of this service carries its record"
        self.domains[record.id] = DomainInfo(uuid=record.id, name=record.name,
                                             state="shutoff", xml=xml)

    def start_domain(self, uuid: str) -> None:
        self._call("start")
        self._set_state(uuid, "running")

    def destroy_domain(self, uuid: str) -> None:
        self._call("destroy")
        if self._domain(uuid).state != "shutoff":
            self._set_state(uuid, "shutoff")

    def request_shutdown(self, uuid: str) -> None:
        self._call("shutdown")
        self._set_state(uuid, "shutoff")

    def undefine_domain(self, uuid: str) -> None:
        self._call("undefine")
        self._domain(uuid)
        del self.domains[uuid]

    def set_metadata(self, uuid: str, xml: str, namespace: str, prefix: str) -> None:
        self._call("set_metadata")
        info = self._domain(uuid)
        record = parse_metadata(xml.replace("<vm>", f'<vm xmlns="{namespace}">', 1))
        assert record is not None
        self.domains[uuid] = dataclasses.replace(info, xml=domain_xml(record))

    def set_title(self, uuid: str, title: str) -> None:
        self._call("set_title")
        self._domain(uuid)

    def save_domain(self, uuid: str, path: str, timeout: float) -> None:
        """Into a volume of a pool (a remote host's seed): a save image of the domain's last
        defined XML; elsewhere (the local host's files) not faked."""
        self._call("save_domain")
        volume = self._pool_volume(path)
        if volume is None:
            raise HypervisorError("saving domains is not faked")
        xml = next(x for x in reversed(self.defined) if f"<uuid>{uuid}</uuid>" in x)
        header = save_image.SaveImageHeader(version=2, data_len=len(xml) + 4096,
                                            was_running=1, compressed=0, xml="", cookie=b"",
                                            unused=b"\0" * 56)
        self.volumes[volume] = save_image.encode_header(header, xml) + b"migration stream"
        self._set_state(uuid, "shutoff")

    def restore_domain(self, path: str, timeout: float) -> None:
        """From a volume of a pool (a remote host's VM): the domain its header names runs."""
        self._call("restore_domain")
        volume = self._pool_volume(path)
        if volume is None or volume not in self.volumes:
            raise HypervisorError("restoring domains is not faked")
        self.restored.append(save_image.parse_header(self.volumes[volume], path).xml)
        record = parse_metadata(self.restored[-1])
        assert record is not None and record.id in self.domains, "restored a defined domain"
        self._set_state(record.id, "running")

    def _pool_volume(self, path: str) -> tuple[str, str] | None:
        folder, _, name = path.rpartition("/")
        pools = [pool for pool, where in self.pool_dirs.items() if where == folder]
        return (pools[0], name) if pools else None

    def channel_exchange(self, uuid: str, channel: str, request: bytes, limit: int,
                         budget: t.Callable[[], float], longest: float) -> str:
        self._call(f"channel {channel}")
        self._domain(uuid)
        self.channel_requests.append((uuid, channel, request))
        return self.channel_reply

    def set_guest_time(self, uuid: str, timeout: float) -> None:
        self._call("set_guest_time")

    def guest_agent_ping(self, uuid: str, timeout: float) -> bool:
        self._call("guest_agent_ping", read=True)
        return True

    def guest_agent_exec(self, uuid: str, path: str, args: list[str], timeout: float,
                         stdin: bytes | None = None) -> int:
        self._call(f"agent {path}")
        return self.agent_exit

    def guest_agent_spawn(self, uuid: str, path: str, args: list[str], timeout: float,
                          stdin: bytes | None = None) -> int:
        self._call(f"agent spawn {path}")
        self.agent_scripts.append(args[-1] if args else "")
        return 1

    def guest_agent_wait(self, uuid: str, pid: int, timeout: float) -> int:
        self._call("agent wait")
        return self.agent_exit

    def guest_agent_status(self, uuid: str, pid: int, timeout: float) -> int | None:
        self._call("agent status", read=True)
        return self.agent_statuses.pop(0) if self.agent_statuses else self.agent_exit

    def fs_freeze(self, uuid: str, timeout: float) -> int:
        self._call("freeze")
        self.frozen = True
        return 1

    def fs_thaw(self, uuid: str, timeout: float) -> int:
        self._call("thaw")
        self.frozen = False
        return 1

    def define_filter(self, xml: str) -> None:
        self._call("define filter")
        self.filters.add(ET.fromstring(xml).get("name"))
        self.filter_xml[ET.fromstring(xml).get("name")] = xml

    def undefine_filter(self, name: str) -> None:
        self._call("undefine filter")
        self.filters.discard(name)  # as the real one: a missing filter is fine

    def create_filter_binding(self, xml: str) -> None:
        self._call("bind filter")
        filter_name = ET.fromstring(xml).find("filterref").get("filter")
        if filter_name not in self.filters:
            raise FilterNotFound(f"no nwfilter {filter_name}")
        self.bindings.add(ET.fromstring(xml).find("portdev").get("name"))

    def delete_filter_binding(self, port: str) -> None:
        self._call("unbind filter")
        self.bindings.discard(port)

    def filter_binding_ports(self) -> list[str]:
        self._call("filter_binding_ports", read=True)
        return sorted(self.bindings)

    def list_filter_names(self) -> list[str]:
        self._call("list_filter_names", read=True)
        return sorted(self.filters)

    def ensure_network(self, name: str, xml: str, bridge_present: t.Callable[[], bool],
                       remove_stale_bridge: t.Callable[[], None]) -> bool:
        self._call("ensure_network")
        created = name not in self.networks
        self.networks[name] = xml
        return created

    def ensure_storage_pool(self, name: str, xml: str, build: bool = False) -> bool:
        self._call("ensure_storage_pool")
        created = name not in self.pools
        self.pools.setdefault(name, 0)
        self.pool_dirs[name] = ET.fromstring(xml).findtext("target/path")
        return created

    def refresh_storage_pool(self, name: str) -> None:
        self._call("refresh_storage_pool")
        if name in self.pools:
            self.pools[name] += 1

    def list_volumes(self, pool: str) -> list[str]:
        self._call("list_volumes", read=True)
        return sorted(name for (where, name) in self.volumes if where == pool)

    def create_volume(self, pool: str, xml: str) -> str:
        self._call("create_volume")
        assert pool in self.pools, "the pool is ensured before a volume is made in it"
        name = ET.fromstring(xml).findtext("name")
        self.volumes[(pool, name)] = xml.encode()
        return self._volume_path(pool, name)

    def volume_path(self, pool: str, name: str) -> str | None:
        self._call("volume_path", read=True)
        return self._volume_path(pool, name) if (pool, name) in self.volumes else None

    def _volume_path(self, pool: str, name: str) -> str:
        return f"{self.pool_dirs.get(pool) or '/pools/' + pool}/{name}"

    def delete_volume(self, pool: str, name: str) -> None:
        self._call("delete_volume")
        self.volumes.pop((pool, name), None)

    def upload_volume(self, pool: str, name: str, size: int,
                      source: t.Callable[[], t.Callable[[int], bytes]], timeout: float) -> None:
        self._call("upload_volume")
        assert pool in self.pools, "the pool is ensured before an upload"
        for _attempt in range(self.stream_attempts - 1):  # broken half-way, sent again
            source()(size // 2 + 1)
        data = bytearray()
        read = source()
        while chunk := read(65536):
            data.extend(chunk)
        assert len(data) == size
        if name in self.corrupt:
            data[0:1] = b"X"
        self.volumes[(pool, name)] = bytes(data)

    def download_volume(self, pool: str, name: str,
                        sink: t.Callable[[], t.Callable[[bytes], t.Any]],
                        timeout: float) -> None:
        self._call("download_volume", read=True)
        if (pool, name) not in self.volumes:
            raise HypervisorError(f"no volume {name!r} in storage pool {pool!r}")
        for _attempt in range(self.stream_attempts):  # sent again on a new connection
            write = sink()
            data = self.volumes[(pool, name)]
            write(data[:len(data) // 2])
        write(data[len(data) // 2:])

    def read_volume_range(self, pool: str, name: str, offset: int, length: int,
                          timeout: float) -> bytes:
        self._call("read_volume_range", read=True)
        if (pool, name) not in self.volumes:
            raise HypervisorError(f"no volume {name!r} in storage pool {pool!r}")
        return self.volumes[(pool, name)][offset:offset + length]

    def write_volume_range(self, pool: str, name: str, offset: int, data: bytes,
                           timeout: float) -> None:
        self._call("write_volume_range")
        old = self.volumes[(pool, name)]
        self.volumes[(pool, name)] = old[:offset] + data + old[offset + len(data):]

    def clone_volume(self, pool: str, source: str, source_pool: str, name: str,
                     timeout: float) -> str:
        self._call("clone_volume")
        if (source_pool, source) not in self.volumes:
            raise HypervisorError(f"no volume {source!r} in storage pool {source_pool!r}")
        self.volumes[(pool, name)] = self.volumes[(source_pool, source)]
        return self._volume_path(pool, name)

    def volume_tail(self, pool: str, name: str, max_bytes: int,
                    timeout: float) -> VolumeTail | None:
        self._call("volume_tail", read=True)
        data = self.volumes.get((pool, name))
        if data is None:
            return None
        start = max(0, len(data) - max_bytes)
        return VolumeTail(data[start:], start, self.volume_mtimes.get((pool, name)))

    def network_is_active(self, name: str) -> bool:
        self._call("network_is_active", read=True)
        return self.network_active

    def dhcp_hosts(self, network: str) -> list[DhcpHost]:
        self._call("dhcp_hosts", read=True)
        return list(self.dhcp.get(network, []))

    def add_dhcp_host(self, network: str, host: DhcpHost) -> bool:
        """As libvirt: refused (False) when an entry has its MAC, name or address."""
        self._call("add_dhcp_host")
        if self.before_add_dhcp_host:  # another manager, just before this one
            self.before_add_dhcp_host.pop(0)()
        held = self.dhcp.setdefault(network, [])
        if any(other.mac == host.mac or other.name == host.name or other.ip == host.ip
               for other in held):
            return False
        held.append(host)
        return True

    def delete_dhcp_host(self, network: str, host: DhcpHost) -> None:
        self._call("delete_dhcp_host")
        self.dhcp[network] = [other for other in self.dhcp.get(network, []) if other != host]


def domain_xml(record: VmRecord) -> str:
    """The smallest domain XML that carries a record."""
    metadata = ET.tostring(metadata_element(record), encoding="unicode")
    return (f"<domain><name>{record.name}</name><uuid>{record.id}</uuid>"
            f"<metadata>{metadata}</metadata></domain>")


class FakeIpSets:
    """The kernel's ipsets: each VM's policy as it was last applied."""

    def __init__(self) -> None:
        self.policies: dict[str, tuple[tuple[str, ...], bool]] = {}
        self.applied: list[tuple[str, tuple[str, ...], bool]] = []
        self.host_refreshes = 0

    def apply(self, vm_name: str, allow_ips: tuple[str, ...], outbound_internet: bool,
              gateway_ip: str) -> None:
        self.policies[vm_name] = (tuple(allow_ips), outbound_internet)
        self.applied.append((vm_name, tuple(allow_ips), outbound_internet))

    def refresh_host_sets(self, max_age_s: float = 0.0) -> None:
        self.host_refreshes += 1

    def destroy(self, vm_name: str) -> None:
        self.policies.pop(vm_name, None)

    def vm_names(self) -> set[str]:
        return set(self.policies)

    def members(self, set_name: str) -> list[str]:
        name, _sep, kind = set_name.rpartition("-")
        allow_ips, outbound = self.policies.get(name, ((), False))
        return list(allow_ips) if kind == "allow" and outbound else []


class FakeTaps:
    """The host's taps: names in a set, and which of them are on the bridge."""

    def __init__(self) -> None:
        self.ports: set[str] = set()
        self.attached: set[str] = set()

    def create(self, port: str, mac: str) -> None:
        self.ports.add(port)

    def attach(self, port: str, bridge: str) -> None:
        assert port in self.ports, f"tap {port} does not exist"
        self.attached.add(port)

    def exists(self, port: str) -> bool:
        return port in self.ports

    def delete(self, port: str) -> None:
        self.ports.discard(port)
        self.attached.discard(port)

    def names(self) -> set[str]:
        return set(self.ports)


class FakeDisks:
    """app.virt.disks (qemu-img) on small text files; every call is logged, ``fail`` breaks
    one."""

    def __init__(self, hypervisor: FakeHypervisor) -> None:
        self.hypervisor = hypervisor
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}

    def _call(self, name: str, *args: t.Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def create_overlay(self, backing: Path, overlay: Path, size_mb: int,
                       timeout: float = 0) -> None:
        self._call("overlay", backing, overlay, size_mb)
        overlay.write_text(f"overlay on {backing}")

    def copy_image(self, source: Path, target: Path, timeout: float = 0) -> None:
        self._call("copy", source, target, self.hypervisor.frozen)
        target.write_text(source.read_text())

    def rebase(self, image: Path, backing: Path, timeout: float = 0,
               unsafe: bool = False) -> None:
        self._call("rebase", image, backing, unsafe)

    def check(self, image: Path, timeout: float = 0) -> None:
        self._call("check", image)

    def backing_file(self, image: Path, timeout: float = 0) -> Path | None:
        self._call("backing_file", image)
        return None

    def convert(self, source: Path, source_format: str, target: Path,
                timeout: float = 0) -> None:
        self._call("convert", source, source_format, target)
        target.write_text(f"{source_format} {source} flattened")

    def info(self, image: Path, image_format: str, timeout: float = 0) -> dict:
        """What qemu-img says of a file read as ``image_format``: its size as the virtual
        size (a qcow2's from its header)."""
        self._call("info", image, image_format)
        if image.read_bytes().startswith(b"<volume"):  # a remote VM's disk: FakeHypervisor's
            volume = ET.fromstring(image.read_text())  # volumes hold their XML
            return {"format": "qcow2", "virtual-size": int(volume.findtext("capacity") or 0),
                    "backing-filename": volume.findtext("backingStore/path"),
                    "backing-filename-format": "qcow2"}
        data = image.read_bytes()[:32]
        size = int.from_bytes(data[24:32], "big") if image_format == "qcow2" else \
            image.stat().st_size
        return {"format": image_format, "virtual-size": size}


# A step of a FakeRunning's script: output to send, seconds to wait, an error to raise, or a
# function of the FakeRunning (its command line and stdin) that gives one of those.
Step = t.Union[tuple[str, bytes], float, Exception, t.Callable[[t.Any], t.Any]]


class FakeRunning:
    """GuestSSH.start's RunningCommand in a FakeGuest: plays ``steps`` in order, then exits
    with ``exit_code``. An announcing command line (a streamed call's) first gets its start
    mark on stdout, unless ``refuse`` (the prelude's exit code and message) says the prelude
    did not start the command. Waits end at the deadline (timed out) or when ``stop()``
    says so (stopped)."""

    def __init__(self, command: str, timeout: float, stdin: t.Any = b"",
                 steps: t.Sequence[Step] = (), exit_code: int = 0,
                 refuse: tuple[int, bytes] | None = None) -> None:
        self.command = command
        self.stdin = stdin if isinstance(stdin, bytes) else b""
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.timed_out = False
        self.stopped = False
        self.closed = False
        self._exit = refuse[0] if refuse else exit_code
        marker = re.search(r"RDS_EXEC_ID=([0-9a-f]{32})", command)
        mark = [("stdout", started_mark(marker.group(1)))] if (
            marker and "printf %s rds-started:" in command and not refuse) else []
        self._steps = [("stderr", refuse[1])] if refuse else [*mark, *steps]

    def output(self, stop: t.Callable[[], bool] = lambda: False) -> t.Iterator[tuple[str, bytes]]:
        for step in self._steps:
            step = step(self) if callable(step) else step
            if isinstance(step, Exception):
                raise step
            if isinstance(step, tuple):
                yield step
                continue
            end = time.monotonic() + step
            while time.monotonic() < end:
                if time.monotonic() >= self.deadline:
                    self.timed_out = True
                    return
                if stop():
                    self.stopped = True
                    return
                time.sleep(0.005)

    def exit_code(self) -> int:
        return -1 if self.timed_out or self.stopped else self._exit

    def close(self) -> None:
        self.closed = True


class FakeGuest:
    """A guest's SSH client (GuestSSH): records each command line and plays the next of
    ``scripts`` (FakeRunning's keyword arguments; none left: exit 0 at once, no output) as
    :meth:`run` (collected under the output cap) or :meth:`start` (kept in ``started``).

    It checks a line as GuestSSH does, and then behaves like OpenSSH: a NUL in an exec request,
    or a request over its 256 KiB packet limit, drops the VM's shared connection.
    """

    def __init__(self, host: str, host_key: str, client_key: t.Any, timeouts: SshTimeouts,
                 port: int = 22) -> None:
        self.host = host
        self.host_key = host_key
        self.commands: list[str] = []
        self.environments: list[dict[str, str]] = []  # each command's env requests
        self.closed = False
        self.scripts: list[dict[str, t.Any]] = []
        self.started: list[FakeRunning] = []

    def _send(self, command: str, environment: t.Mapping[str, str] | None = None) -> None:
        check_command_line(command)
        check_environment(environment or {})
        if "\0" in command or len(command.encode("utf-8")) > 256 * 1024:
            raise GuestUnreachable("guest dropped the command: connection closed by sshd")
        self.commands.append(command)
        self.environments.append(dict(environment or {}))

    def run(self, command: str, timeout: float, stdin: t.Any = b"",
            max_output: int = 1_000_000,
            environment: t.Mapping[str, str] | None = None) -> CommandResult:
        self._send(command, environment)
        return collect(self._play(command, timeout, stdin), max_output)

    def start(self, command: str, timeout: float, stdin: t.Any = b"",
              environment: t.Mapping[str, str] | None = None) -> FakeRunning:
        self._send(command, environment)
        running = self._play(command, timeout, stdin)
        self.started.append(running)
        return running

    def _play(self, command: str, timeout: float, stdin: t.Any) -> FakeRunning:
        return FakeRunning(command, timeout, stdin,
                           **(self.scripts.pop(0) if self.scripts else {}))

    def open_stream(self, command: str, timeout: float) -> FakeMissingPath:
        self._send(command)
        return FakeMissingPath()

    def wait_until_ready(self, deadline: float, probe: str = "id -u") -> str:
        self._send(probe)
        return ""

    def close(self) -> None:
        self.closed = True

    def retire(self) -> None:
        self.retired = self.closed = True


class FakeMissingPath:
    """GuestSSH.open_stream's stream for ``pack`` of a path that does not exist (exit 212)."""

    stderr = b"rds-pack: no such file or directory"

    def first_chunk(self) -> bytes:
        return b""

    def exit_status(self) -> int:
        return 212

    def close(self) -> None:
        pass


class FakeGuests:
    """Makes FakeGuests (the ``connect`` of GuestClients) and keeps them by address."""

    def __init__(self) -> None:
        self.by_host: dict[str, FakeGuest] = {}

    def __call__(self, host: str, host_key: str, client_key: t.Any, timeouts: SshTimeouts,
                 port: int = 22) -> FakeGuest:
        guest = FakeGuest(host, host_key, client_key, timeouts, port)
        self.by_host[host] = guest
        return guest


@dataclasses.dataclass
class Fakes:
    hypervisor: FakeHypervisor
    ipsets: FakeIpSets
    taps: FakeTaps
    disks: FakeDisks
    guests: FakeGuests
    bridge_nf: Path
    remotes: dict[str, FakeHypervisor] = dataclasses.field(default_factory=dict)  # HOSTS'


def unit_settings(storage_root: Path, **overrides: t.Any) -> Settings:
    return load_settings(environ={}, overrides={
        "API_KEY": API_KEY, "ADMIN_EMAIL": ADMIN_EMAIL, "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SESSION_SECRET": "unit-test-session-secret", "MAX_VMS": MAX_VMS,
        "STORAGE_ROOT": str(storage_root), "LIBVIRT_TIMEOUT_S": 1, **overrides})


def auth_service(settings: Settings, clock: t.Callable[[], float]) -> AuthService:
    """The real AuthService on a SQLite file under the settings' STORAGE_ROOT."""
    store = Store(settings.state_db_path)
    store.open()
    return AuthService(settings, store, clock=clock)


class AuthActions:
    """Admin session helpers, as in Flask's tutorial tests."""

    def __init__(self, client: t.Any) -> None:
        self._client = client

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD):
        return self._client.post("/auth/login", json={"email": email, "password": password})

    def logout(self):
        return self._client.post("/auth/logout", headers=CSRF)


def add_image_builds(settings: Settings) -> None:
    """Two builds of the default template's image, the newer one current."""
    image_dir = settings.images_dir / "debian-bookworm"
    for build in (OLD_BUILD, NEW_BUILD):
        (image_dir / build).mkdir(parents=True, exist_ok=True)
        (image_dir / build / "manifest.json").write_text('{"diskSizeMb": 4096}')
        (image_dir / build / "disk.qcow2").write_text("template")
        for name in ("vmlinuz", "initrd.img"):
            (image_dir / build / name).write_text(name)
    current = image_dir / "current"
    if not current.is_symlink():
        current.symlink_to(NEW_BUILD)


def make_services(root: Path, monkeypatch: pytest.MonkeyPatch,
                  clock: t.Callable[[], float], **overrides: t.Any) -> tuple[Services, Fakes]:
    """The real services on fakes, under ``root`` (their STORAGE_ROOT)."""
    settings = unit_settings(root, TEMPLATES_DIR=str(REPO_ROOT / "vm-templates"), **overrides)
    add_image_builds(settings)
    hypervisor = FakeHypervisor()
    fakes = Fakes(hypervisor=hypervisor, ipsets=FakeIpSets(), taps=FakeTaps(),
                  disks=FakeDisks(hypervisor), guests=FakeGuests(),
                  bridge_nf=root / "bridge-nf-call-iptables")
    fakes.bridge_nf.write_text("1\n")
    for name in ("create_overlay", "copy_image", "rebase", "check", "backing_file", "convert",
                 "info"):
        monkeypatch.setattr(f"app.virt.disks.{name}", getattr(fakes.disks, name))
    adapters = Adapters(hypervisor=hypervisor, ipsets=fakes.ipsets, taps=fakes.taps,
                        domain_type="qemu", connect=fakes.guests, bridge_nf=fakes.bridge_nf,
                        clock=clock, run_later=run_at_once,
                        open_host=lambda host: fakes.remotes.setdefault(host.name,
                                                                        FakeHypervisor()))
    return build_services(settings, adapters), fakes


def run_at_once(fn: t.Callable[..., t.Any], *args: t.Any) -> None:
    """Background work, done before the call that asked for it returns (deterministic)."""
    fn(*args)


def record(number: int, build: str = OLD_BUILD, root: Path | None = None,
           **fields: t.Any) -> VmRecord:
    """A VM record as another process would have made it (``rds-0000000N``)."""
    vm_id = f"{number:08x}-0000-4000-8000-000000000000"
    image = (root / "images" / "debian-bookworm" / build) if root else Path("/images") / build
    base = dict(id=vm_id, name=f"rds-{number:08x}", cpu=2, mem_mb=512, guest_ip="172.16.0.9",
                mac="52:54:00:10:00:09", allow_ips=(), outbound_internet=False,
                image_id="default", image_path=str(image), disk_size_mb=6144,
                created_at="2024-01-01T00:00:00.000Z", provision_mode=ProvisionMode.BOOT,
                host_key="ssh-ed25519 AAAA", phase=VmPhase.READY)
    return VmRecord(**{**base, **fields})



class World:
    """The real services on fakes under ``root``, with shortcuts for what tests look at."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch,
                 clock: t.Callable[[], float] = time.time, **overrides: t.Any) -> None:
        self.root = root
        self.services, self.fakes = make_services(root, monkeypatch, clock, **overrides)
        self.settings = self.services.settings
        self.vms = self.services.vms
        self.parts = self.services.vms.parts
        self.snapshots = self.services.snapshots
        self.store = self.services.snapshots.store
        self.templates = self.services.templates
        self.hypervisor = self.fakes.hypervisor
        self.disks = self.fakes.disks
        self.ipsets = self.fakes.ipsets
        self.taps = self.fakes.taps

    def build(self, name: str) -> Path:
        return self.settings.images_dir / "debian-bookworm" / name

    def add_vm(self, number: int, state: str = "running", build: str = OLD_BUILD,
               **fields: t.Any) -> VmRecord:
        """A VM another process made: its domain, record and disk file."""
        made = record(number, build, self.root, **fields)
        vm_dir = self.settings.vms_dir / made.name
        vm_dir.mkdir(parents=True, exist_ok=True)
        (vm_dir / "disk.qcow2").write_text(f"disk of {made.name}")
        self.hypervisor.add(made, state)
        return made

    def snapshot_dirs(self) -> list[str]:
        folder = self.settings.snapshots_dir
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
