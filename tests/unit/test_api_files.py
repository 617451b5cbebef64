"""POST /v1/vms/{id}/files/upload through the Flask test client, on the real FileService with a
fake guest: what reaches the guest (holes 1 and 2), and answers to bodies that are not read
to the end (hole 3; the live-server test sends them over a real socket)."""
from __future__ import annotations

import io
import os
import tarfile
import uuid

import pytest

from app.errors import VmStateConflict
from app.models import CommandResult, VmSpec, VmState
from app.services.files import FileService
from tests.unit.tarbuild import MIB, ZeroStream, extended, gzip_pieces, member, targz, zeros

DRAIN_SLACK = 16 * MIB


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


def stream_upload(client, auth, vm: str, stream: ZeroStream, declared: int | None,
                  query: str = "?dest=proj", content_type: str = "application/gzip"):
    """A body the test client does not buffer: declared (Content-Length) or not (chunked)."""
    environ = {"wsgi.input": stream}
    if declared is None:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(declared)
    return client.post(f"/v1/vms/{vm}/files/upload{query}", content_type=content_type,
                       headers=auth, environ_overrides=environ)


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


# Hole 3: an early answer reads the rest of the body first ###################################

def test_early_413_declared_too_large_is_decided_before_the_vm_lookup(client, auth, services,
                                                                       guests):
    limit = services.settings.max_upload_bytes
    stream = ZeroStream(limit + MIB)
    response = stream_upload(client, auth, str(uuid.uuid4()), stream, declared=stream.size)
    assert response.status_code == 413, response.json
    assert "larger than" in response.json["message"]
    assert guests.lookups == 0
    assert stream.consumed == stream.size  # drained: the client can read the answer


def test_early_413_undeclared_too_large_body_is_drained(client, auth, services, guests):
    stream = ZeroStream(services.settings.max_upload_bytes + 3 * MIB)
    response = stream_upload(client, auth, str(uuid.uuid4()), stream, declared=None)
    assert response.status_code == 413, response.json
    assert stream.consumed == stream.size


@pytest.mark.parametrize("query, content_type, status", [
    ("?dest=/etc", "application/gzip", 400),
    ("", "application/gzip", 400),  # dest missing: refused by the schema, before the view
    ("?dest=proj", "text/plain", 400),
])
def test_early_answer_bad_request_is_drained(client, auth, guests, vm_id, query, content_type,
                                             status):
    stream = ZeroStream(5 * MIB)
    response = stream_upload(client, auth, vm_id, stream, declared=stream.size, query=query,
                             content_type=content_type)
    assert response.status_code == status and response.json["message"]
    assert stream.consumed == stream.size


@pytest.mark.parametrize("declared", [True, False])
def test_early_answer_unknown_vm_is_drained(client, auth, guests, declared):
    stream = ZeroStream(5 * MIB)
    response = stream_upload(client, auth, str(uuid.uuid4()), stream,
                             declared=stream.size if declared else None)
    assert response.status_code == 404, response.json
    assert stream.consumed == stream.size


def test_early_answer_stopped_vm_is_drained(client, auth, services, guests, vm_id):
    services.vms.stop(vm_id)
    stream = ZeroStream(MIB)
    response = stream_upload(client, auth, vm_id, stream, declared=stream.size)
    assert response.status_code == 409, response.json
    assert stream.consumed == stream.size


def test_early_answer_drain_is_bounded_then_the_connection_closes(client, auth, services, guests):
    bound = services.settings.max_upload_bytes + DRAIN_SLACK
    endless = ZeroStream(10 * bound)
    response = stream_upload(client, auth, str(uuid.uuid4()), endless, declared=None)
    assert response.status_code == 413
    assert bound <= endless.consumed < bound + 2 * MIB
    assert response.headers["Connection"] == "close"

    declared = ZeroStream(10 * bound)
    response = stream_upload(client, auth, str(uuid.uuid4()), declared, declared=declared.size)
    assert response.status_code == 413 and declared.consumed == 0
    assert response.headers["Connection"] == "close"


def test_early_answer_unauthenticated_upload_is_not_drained(client, guests):
    stream = ZeroStream(5 * MIB)
    response = stream_upload(client, {"X-API-Key": "wrong"}, str(uuid.uuid4()), stream,
                             declared=stream.size)
    assert response.status_code == 401
    assert stream.consumed == 0 and response.headers["Connection"] == "close"
