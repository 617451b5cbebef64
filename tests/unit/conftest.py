"""Unit fixtures: the app on the real services over fake adapters (no libvirt, no root, no
VMs, no network; see tests/unit/fakes.py) and golden files."""
from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest

from app import actor, create_app
from app.models import VmSpec
from app.services.container import Services
from tests.unit import spec_check
from tests.unit.fakes import API_KEY, AuthActions, Fakes, World

DATA_DIR = Path(__file__).parent / "data"


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def system_caller() -> None:
    """Each test starts as the service itself (app.actor's context variables live on in the
    test thread, and a request of an earlier test set them)."""
    actor.enter(actor.SYSTEM_CALLER)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world_settings() -> dict[str, t.Any]:
    """Settings the world starts with, over the fakes' defaults: a module overrides this
    fixture to change them for all its tests (e.g. tests/unit/remote_hosts.py's HOSTS)."""
    return {}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock,
          world_settings: dict[str, t.Any]) -> World:
    """The real services on fakes, under a fresh STORAGE_ROOT."""
    return World(tmp_path, monkeypatch, clock, **world_settings)


@pytest.fixture
def services(world: World) -> Services:
    return world.services


@pytest.fixture
def fakes(world: World) -> Fakes:
    return world.fakes


@pytest.fixture
def specs(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[VmSpec]:
    """Every create request that reached the VM service (after the schema), in order."""
    seen: list[VmSpec] = []
    provisioner = services.vms.parts.provisioner
    real = provisioner.plan

    def plan(spec: VmSpec):
        seen.append(spec)
        return real(spec)

    monkeypatch.setattr(provisioner, "plan", plan)
    return seen


@pytest.fixture
def app(services: Services):
    """A new app on fresh fakes for each test; every answer it gives must be one the OpenAPI
    document describes (tests/unit/spec_check.py)."""
    application = create_app({"TESTING": True}, services=services)
    checker = spec_check.install(application)
    yield application
    services.close()
    assert not checker.violations, "answers the OpenAPI document does not describe:\n" + \
        "\n".join(dict.fromkeys(checker.violations))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers that pass the API-key check."""
    return {"X-API-Key": API_KEY}


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
