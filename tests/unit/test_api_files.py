"""POST /v1/vms/{id}/files/upload through the Flask test client, on the real FileService with a
fake guest: what reaches the guest (holes 1 and 2)."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from app.errors import VmStateConflict
from app.models import CommandResult, VmSpec, VmState
from app.services.files import FileService
from tests.unit.tarbuild import MIB, extended, gzip_pieces, member, targz, zeros


class FakeGuest:
    """Stands in for GuestSSH: takes stdin the ways the real ``run`` does and keeps it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def run(self, command: str, timeout: float, stdin=b"", max_output: int = 1_000_000):
        if callable(stdin):
            sink = io.BytesIO()
            stdin(sink)
            data = sink.getvalue()
        else:
            data = stdin if isinstance(stdin, bytes) else stdin.read()
        self.received.append(data)
        return CommandResult(exit_code=0, stdout=b"", stderr=b"")


class GuestVms:
    """The one VmService method FileService uses, on the unit fakes."""

    def __init__(self, vms) -> None:
        self.vms = vms
        self.guests: dict[str, FakeGuest] = {}
        self.lookups = 0

    def guest(self, vm_id: str) -> FakeGuest:
        self.lookups += 1
        vm = self.vms.get(vm_id)
        if vm.state is not VmState.RUNNING:
            raise VmStateConflict(f"VM {vm_id} is {vm.state.value}; it must be RUNNING")
        return self.guests.setdefault(vm_id, FakeGuest())


@pytest.fixture
def guests(services) -> GuestVms:
    vms = GuestVms(services.vms)
    services.files = FileService(services.settings, vms)
    return vms


@pytest.fixture
def vm_id(services, guests) -> str:
    return services.vms.create(VmSpec(cpu=1, mem_mb=256)).id


def upload(client, auth, vm: str, body: bytes):
    return client.post(f"/v1/vms/{vm}/files/upload?dest=proj", data=body,
                       content_type="application/gzip", headers=auth)


def tar_entries(tar: bytes) -> list[tuple[str, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        return [(info.name, archive.extractfile(info).read() if info.isreg() else info.type)
                for info in archive]


# Holes 1 and 2: the guest gets the re-packed archive, or nothing ###########################

def test_multi_member_guest_gets_exactly_the_checked_entries(client, auth, guests, vm_id):
    body = targz(member("a.txt", b"alpha"), member("d", kind=tarfile.DIRTYPE),
                 member("d/l", kind=tarfile.SYMTYPE, link="../a.txt"))
    response = upload(client, auth, vm_id, body)
    assert response.status_code == 204, response.json
    [received] = guests.guests[vm_id].received
    assert tar_entries(received) == [("a.txt", b"alpha"), ("d", tarfile.DIRTYPE),
                                     ("d/l", tarfile.SYMTYPE)]


def test_multi_member_second_gzip_member_never_reaches_the_guest(client, auth, guests, vm_id):
    second = targz(member("passwd", kind=tarfile.SYMTYPE, link="/etc/passwd"),
                   member("shadow", kind=tarfile.LNKTYPE, link="/etc/shadow"))
    response = upload(client, auth, vm_id, targz(member("a.txt", b"fine")) + second)
    assert response.status_code == 400
    assert "after the end of its gzip stream" in response.json["message"]
    assert guests.guests.get(vm_id) is None or guests.guests[vm_id].received == []


def test_header_bomb_is_413_and_never_reaches_the_guest(client, auth, guests, vm_id):
    body = gzip_pieces([extended(tarfile.XHDTYPE, b"", declared=256 * MIB),
                        *zeros(256 * MIB)])
    response = upload(client, auth, vm_id, body)
    assert response.status_code == 413 and "extended header" in response.json["message"]
    assert guests.guests.get(vm_id) is None or guests.guests[vm_id].received == []


def test_upload_larger_than_the_json_body_limit_is_accepted(client, auth, guests, vm_id):
    """MAX_CONTENT_LENGTH (2 MiB, for JSON) must not apply to uploads."""
    body = targz(member("random.bin", os.urandom(3 * MIB)))
    assert len(body) > 2 * MIB
    assert upload(client, auth, vm_id, body).status_code == 204
