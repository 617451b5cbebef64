"""Unit fixtures: the app on fake services (no libvirt, no VMs, no network) and golden files."""
from __future__ import annotations

import dataclasses
import os
import typing as t
import uuid
from pathlib import Path

import pytest

from app import create_app
from app.config import Settings, load_settings
from app.errors import (GuestUnreachable, InvalidRequest, QuotaExceeded, SnapshotNotFound,
                        VmNotFound, VmStateConflict)
from app.guestssh import check_command_line
from app.models import CommandResult, Snapshot, Vm, VmSpec, VmState
from app.services.auth import AuthService
from app.services.commands import CommandService
from app.services.files import FileService
from app.store.db import Store
from app.services.health import HealthService

API_KEY = "unit-test-key"
ADMIN_EMAIL = "admin@test.example"
ADMIN_PASSWORD = "unit-test-password"
MAX_VMS = 3
CSRF = {"X-Requested-With": "unit-test"}  # what a cookie-authenticated change must send
DATA_DIR = Path(__file__).parent / "data"


class FakeHypervisor:
    """What /healthz asks of the Hypervisor; ``down`` makes every call fail like libvirt would."""

    def __init__(self) -> None:
        self.down: Exception | None = None
        self.network_active = True

    def ping(self) -> str:
        if self.down:
            raise self.down
        return "10.0.0"

    def network_is_active(self, name: str) -> bool:
        if self.down:
            raise self.down
        return self.network_active


class FakeGuest:
    """A RUNNING VM's SSH client (GuestSSH): records each command line, answers exit 0.

    It checks a line as GuestSSH does, and then behaves like OpenSSH would: a NUL in an exec
    request, or a request over its 256 KiB packet limit, drops the VM's shared connection;
    a lone surrogate cannot be encoded at all.
    """

    def __init__(self) -> None:
        self.commands: list[str] = []

    def _send(self, command: str) -> None:
        check_command_line(command)
        if "\0" in command or len(command.encode("utf-8")) > 256 * 1024:
            raise GuestUnreachable("guest dropped the command: connection closed by sshd")
        self.commands.append(command)

    def run(self, command: str, timeout: float, stdin: t.Any = b"",
            max_output: int = 1_000_000) -> CommandResult:
        self._send(command)
        return CommandResult(exit_code=0, stdout=b"", stderr=b"")

    def open_stream(self, command: str, timeout: float) -> FakeMissingPath:
        self._send(command)
        return FakeMissingPath()


class FakeMissingPath:
    """GuestSSH.open_stream's stream for ``pack`` of a path that does not exist (exit 212)."""

    stderr = b"rds-pack: no such file or directory"

    def first_chunk(self) -> bytes:
        return b""

    def exit_status(self) -> int:
        return 212

    def close(self) -> None:
        pass


class FakeVmService:
    """An in-memory VmService with the real one's errors; ``fail_with`` breaks create()."""

    def __init__(self, max_vms: int) -> None:
        self.max_vms = max_vms
        self.vms: dict[str, Vm] = {}
        self.guests: dict[str, FakeGuest] = {}
        self.created: list[VmSpec] = []
        self.fail_with: Exception | None = None
        self.snapshots: FakeSnapshotService | None = None

    def list(self) -> list[Vm]:
        return sorted(self.vms.values(), key=lambda vm: (vm.created_at, vm.id))

    def get(self, vm_id: str) -> Vm:
        try:
            return self.vms[vm_id]
        except KeyError:
            raise VmNotFound(f"VM {vm_id} not found") from None

    def create(self, spec: VmSpec) -> Vm:
        if self.fail_with is not None:
            raise self.fail_with
        if spec.image_id not in (None, "default"):
            raise InvalidRequest(f"unknown imageId {spec.image_id!r} (known: default)")
        if spec.snapshot_id is not None and self.snapshots is not None:
            self.snapshots.get(spec.snapshot_id)
        if len(self.vms) >= self.max_vms:
            raise QuotaExceeded(f"VM quota reached ({self.max_vms} VMs)")
        self.created.append(spec)
        index = len(self.created)
        vm_id = str(uuid.UUID(int=index))
        vm = Vm(id=vm_id, state=VmState.RUNNING, cpu=spec.cpu, mem_mb=spec.mem_mb,
                guest_ip=f"172.16.0.{index + 1}", outbound_internet=spec.outbound_internet,
                allow_ips=spec.allow_ips, created_at=f"2024-01-01T00:00:{index:02d}.000Z",
                image_id=spec.image_id or "default", provision_mode="boot",
                name=f"rds-{vm_id[:8]}", snapshot_id=spec.snapshot_id)
        self.vms[vm_id] = vm
        return vm

    def delete(self, vm_id: str) -> None:
        self.get(vm_id)
        del self.vms[vm_id]

    def stop(self, vm_id: str) -> None:
        self._transition(vm_id, VmState.RUNNING, VmState.STOPPED)

    def start(self, vm_id: str) -> None:
        self._transition(vm_id, VmState.STOPPED, VmState.RUNNING)

    def update_network(self, vm_id: str, allow_ips: tuple[str, ...],
                       outbound_internet: bool) -> Vm:
        vm = dataclasses.replace(self.get(vm_id), allow_ips=allow_ips,
                                 outbound_internet=outbound_internet)
        self.vms[vm_id] = vm
        return vm

    def guest(self, vm_id: str) -> FakeGuest:
        vm = self.get(vm_id)
        if vm.state is not VmState.RUNNING:
            raise VmStateConflict(f"VM {vm_id} is {vm.state.value}; it must be RUNNING")
        return self.guests.setdefault(vm_id, FakeGuest())

    def _transition(self, vm_id: str, wanted: VmState, new: VmState) -> None:
        vm = self.get(vm_id)
        if vm.state is not wanted:
            raise VmStateConflict(f"VM {vm_id} is {vm.state.value}; it must be {wanted.value}")
        self.vms[vm_id] = dataclasses.replace(vm, state=new)


class FakeSnapshotService:
    """In-memory snapshots with the real service's rules: RUNNING or STOPPED VMs only, and no
    delete while a VM created from the snapshot exists."""

    def __init__(self, vms: FakeVmService) -> None:
        self.vms = vms
        self.snapshots: dict[str, Snapshot] = {}

    def take(self, vm_id: str) -> Snapshot:
        vm = self.vms.get(vm_id)
        if vm.state not in (VmState.RUNNING, VmState.STOPPED):
            raise VmStateConflict(f"VM {vm_id} is {vm.state.value}")
        index = len(self.snapshots) + 1
        snapshot_id = str(uuid.UUID(int=0x5000 + index))
        snapshot = Snapshot(id=snapshot_id, created_at=f"2024-01-02T00:00:{index:02d}.000Z",
                            cpu=vm.cpu, mem_mb=vm.mem_mb, image_id=vm.image_id,
                            source_vm_id=vm.id, image_path="/images/x/abc/disk.qcow2",
                            disk_size_mb=4096, disk_path=f"/snapshots/{snapshot_id}/disk.qcow2")
        self.snapshots[snapshot_id] = snapshot
        return snapshot

    def list(self) -> list[Snapshot]:
        return sorted(self.snapshots.values(), key=lambda s: (s.created_at, s.id))

    def get(self, snapshot_id: str) -> Snapshot:
        try:
            return self.snapshots[snapshot_id]
        except KeyError:
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found") from None

    def delete(self, snapshot_id: str) -> None:
        self.get(snapshot_id)
        if any(vm.snapshot_id == snapshot_id for vm in self.vms.vms.values()):
            raise VmStateConflict(f"snapshot {snapshot_id} is in use")
        del self.snapshots[snapshot_id]


@dataclasses.dataclass
class FakeServices:
    """The service bundle: fakes below the API, and the real command and file services on
    the fake VMs (their validation is what a caller meets)."""

    settings: Settings
    hypervisor: FakeHypervisor
    vms: FakeVmService
    snapshots: FakeSnapshotService
    commands: CommandService
    files: FileService
    auth: AuthService
    health: HealthService | None = None
    domain_type: str = "qemu"
    closed: bool = False

    def close(self) -> None:
        self.closed = True


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def bridge_nf(tmp_path) -> Path:
    """Stands in for /proc/sys/net/bridge/bridge-nf-call-iptables (on: "1")."""
    path = tmp_path / "bridge-nf-call-iptables"
    path.write_text("1\n")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def unit_settings(storage_root: Path, **overrides: t.Any) -> Settings:
    return load_settings(environ={}, overrides={
        "API_KEY": API_KEY, "ADMIN_EMAIL": ADMIN_EMAIL, "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SESSION_SECRET": "unit-test-session-secret", "MAX_VMS": MAX_VMS,
        "STORAGE_ROOT": str(storage_root), **overrides})


def auth_service(settings: Settings, clock: FakeClock) -> AuthService:
    """The real AuthService on a SQLite file under the settings' STORAGE_ROOT."""
    store = Store(settings.state_db_path)
    store.open()
    return AuthService(settings, store, clock=clock)


@pytest.fixture
def services(tmp_path: Path, clock: FakeClock, bridge_nf: Path) -> FakeServices:
    settings = unit_settings(tmp_path)
    vms = FakeVmService(settings.max_vms)
    vms.snapshots = FakeSnapshotService(vms)
    hypervisor = FakeHypervisor()
    return FakeServices(settings=settings, hypervisor=hypervisor, vms=vms,
                        snapshots=vms.snapshots, commands=CommandService(settings, vms),
                        files=FileService(settings, vms), auth=auth_service(settings, clock),
                        health=HealthService(settings, hypervisor, "qemu", bridge_nf))


@pytest.fixture
def app(services: FakeServices):
    """A new app on fresh fakes for each test."""
    yield create_app({"TESTING": True}, services=services)
    services.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers that pass the API-key check."""
    return {"X-API-Key": API_KEY}


class AuthActions:
    """Admin session helpers, as in Flask's tutorial tests."""

    def __init__(self, client: t.Any) -> None:
        self._client = client

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD):
        return self._client.post("/auth/login", json={"email": email, "password": password})

    def logout(self):
        return self._client.post("/auth/logout", headers=CSRF)


@pytest.fixture
def session(client) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def golden() -> t.Callable[[str, str], None]:
    """Compare text with ``data/<name>``; ``REGENERATE_GOLDEN=1`` rewrites the file instead
    (then review its diff before committing)."""

    def check(name: str, actual: str) -> None:
        path = DATA_DIR / name
        if os.environ.get("REGENERATE_GOLDEN") == "1":
            path.write_text(actual)
            return
        assert path.is_file(), f"{path} missing: run with REGENERATE_GOLDEN=1 and review it"
        assert actual == path.read_text(), f"{name} differs (REGENERATE_GOLDEN=1 to accept)"

    return check
