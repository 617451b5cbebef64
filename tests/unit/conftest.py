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
from app.errors import InvalidRequest, QuotaExceeded, VmNotFound, VmStateConflict
from app.models import Vm, VmSpec, VmState

API_KEY = "unit-test-key"
ADMIN_EMAIL = "admin@test.example"
ADMIN_PASSWORD = "unit-test-password"
MAX_VMS = 3
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


class FakeVmService:
    """An in-memory VmService with the real one's errors; ``fail_with`` breaks create()."""

    def __init__(self, max_vms: int) -> None:
        self.max_vms = max_vms
        self.vms: dict[str, Vm] = {}
        self.created: list[VmSpec] = []
        self.fail_with: Exception | None = None

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
        if len(self.vms) >= self.max_vms:
            raise QuotaExceeded(f"VM quota reached ({self.max_vms} VMs)")
        self.created.append(spec)
        index = len(self.created)
        vm_id = str(uuid.UUID(int=index))
        vm = Vm(id=vm_id, state=VmState.RUNNING, cpu=spec.cpu, mem_mb=spec.mem_mb,
                guest_ip=f"172.16.0.{index + 1}", outbound_internet=spec.outbound_internet,
                allow_ips=spec.allow_ips, created_at=f"2024-01-01T00:00:{index:02d}.000Z",
                image_id=spec.image_id or "default", provision_mode="boot",
                name=f"rds-{vm_id[:8]}")
        self.vms[vm_id] = vm
        return vm

    def delete(self, vm_id: str) -> None:
        self.get(vm_id)
        del self.vms[vm_id]

    def stop(self, vm_id: str) -> None:
        self._transition(vm_id, VmState.RUNNING, VmState.STOPPED)

    def start(self, vm_id: str) -> None:
        self._transition(vm_id, VmState.STOPPED, VmState.RUNNING)

    def _transition(self, vm_id: str, wanted: VmState, new: VmState) -> None:
        vm = self.get(vm_id)
        if vm.state is not wanted:
            raise VmStateConflict(f"VM {vm_id} is {vm.state.value}; it must be {wanted.value}")
        self.vms[vm_id] = dataclasses.replace(vm, state=new)


@dataclasses.dataclass
class FakeServices:
    settings: Settings
    hypervisor: FakeHypervisor
    vms: FakeVmService
    domain_type: str = "qemu"
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def services() -> FakeServices:
    settings = load_settings(environ={}, overrides={
        "API_KEY": API_KEY, "ADMIN_EMAIL": ADMIN_EMAIL, "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SESSION_SECRET": "unit-test-session-secret", "MAX_VMS": MAX_VMS})
    return FakeServices(settings=settings, hypervisor=FakeHypervisor(),
                        vms=FakeVmService(settings.max_vms))


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
        return self._client.post("/auth/logout")


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
