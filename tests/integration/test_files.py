"""Upload (tar.gz -> workspace) and download (workspace -> tar.gz) against a real guest,
including a corpus of hostile archives that must all be refused with nothing written."""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import uuid

import pytest

from app import create_app
from tests.integration.conftest import API_KEY, HEADERS, exec_ok


def make_targz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"x",
          link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info, data if kind == tarfile.REGTYPE else None


def upload(api, vm, dest: str, body: bytes, content_type: str = "application/gzip"):
    return api.request("POST", f"/v1/vms/{vm['id']}/files/upload?dest={dest}", data=body,
                       content_type=content_type)


def download(api, vm, path: str):
    return api.request("GET", f"/v1/vms/{vm['id']}/files/download?path={path}")


def test_round_trip_directory_and_single_file(api, shared_vm):
    body = make_targz([entry("proj/", tarfile.DIRTYPE), entry("proj/a.txt", data=b"alpha\n"),
                       entry("proj/bin/run.sh", data=b"#!/bin/sh\necho run\n"),
                       entry("proj/link", tarfile.SYMTYPE, link="a.txt")])
    response = upload(api, shared_vm, "/home/user/rt", body)
    assert response.status_code == 204, response.json
    listing = exec_ok(api, shared_vm["id"], "cd rt && find . | sort && stat -c '%u:%g' proj/a.txt"
                      " && cat proj/link")["stdout"].split()
    assert listing == [".", "./proj", "./proj/a.txt", "./proj/bin", "./proj/bin/run.sh",
                       "./proj/link", "1000:1000", "alpha"]

    response = download(api, shared_vm, "/workspace/rt")
    assert response.status_code == 200 and response.mimetype == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.data), mode="r:gz") as archive:
        names = sorted(archive.getnames())
        assert archive.extractfile("./proj/a.txt").read() == b"alpha\n"
    assert "./proj/bin/run.sh" in names and "./proj/link" in names

    single = download(api, shared_vm, "rt/proj/a.txt")
    with tarfile.open(fileobj=io.BytesIO(single.data), mode="r:gz") as archive:
        assert archive.getnames() == ["a.txt"]


def test_upload_into_relative_dest_keeps_existing_files(api, shared_vm):
    exec_ok(api, shared_vm["id"], "mkdir -p keep && echo old > keep/old.txt && chmod 750 keep")
    assert upload(api, shared_vm, "keep", make_targz([entry("new.txt")])).status_code == 204
    out = exec_ok(api, shared_vm["id"], "ls keep; stat -c %a keep")["stdout"].split()
    assert out == ["new.txt", "old.txt", "750"]


HOSTILE = {
    "absolute path": [entry("/etc/evil")],
    "dotdot escape": [entry("ok.txt"), entry("../escape.txt")],
    "symlink out": [entry("out", tarfile.SYMTYPE, link="/etc")],
    "relative symlink out": [entry("out", tarfile.SYMTYPE, link="../../etc")],
    "write through symlink": [entry("in", tarfile.SYMTYPE, link="."),
                              entry("in/file.txt")],
    "chained symlinks": [entry("a", tarfile.SYMTYPE, link="."),
                         entry("a/b", tarfile.SYMTYPE, link="..")],
    "hard link to shadow": [entry("shadow", tarfile.LNKTYPE, link="/etc/shadow")],
    "hard link inside": [entry("f.txt"), entry("g.txt", tarfile.LNKTYPE, link="f.txt")],
    "device node": [entry("dev", tarfile.CHRTYPE)],
    "block device": [entry("blk", tarfile.BLKTYPE)],
    "fifo": [entry("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_written(api, shared_vm, case):
    dest = f"hostile-{uuid.uuid4().hex[:8]}"
    response = upload(api, shared_vm, dest, make_targz(HOSTILE[case]))
    assert response.status_code == 400, response.json
    assert "archive entry" in response.json["message"]
    check = exec_ok(api, shared_vm["id"], f"test -e {dest} && echo EXISTS; "
                                          "ls -A /workspace | grep -c rds-upload || true")
    assert check["stdout"].split() == ["0"]


def test_many_tiny_entries_are_refused(api, shared_vm, services):
    count = services.settings.max_upload_entries * 10
    body = make_targz([entry(f"f{i}", data=b"") for i in range(count)])
    response = upload(api, shared_vm, "many", body)
    assert response.status_code == 413 and "entries" in response.json["message"]
    assert exec_ok(api, shared_vm["id"], "test -e many || echo absent")["stdout"] == "absent\n"


def test_zip_bomb_is_refused(api, shared_vm):
    """1 GB of zeros: about 1 MB compressed, refused from its header before inflating."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 1024 ** 3
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        block = bytes(1024 * 1024)
        for _ in range(1024):
            gz.write(block)
        gz.write(bytes(1024))
    response = upload(api, shared_vm, "bomb", raw.getvalue())
    assert response.status_code == 413 and "expands" in response.json["message"]
    assert exec_ok(api, shared_vm["id"], "test -e bomb || echo absent")["stdout"] == "absent\n"


def test_too_large_body_is_413(api, shared_vm, services):
    body = os.urandom(services.settings.max_upload_bytes + 1024)
    response = upload(api, shared_vm, "big", body)
    assert response.status_code == 413 and response.json["message"]


def assert_nothing_written(api, vm, dest: str) -> None:
    check = exec_ok(api, vm["id"], f"test -e {dest} && echo EXISTS; "
                                   "ls -A /workspace | grep -c rds-upload || true")
    assert check["stdout"].split() == ["0"]


def test_second_gzip_member_is_refused_and_nothing_written(api, shared_vm):
    """The check read the first gzip member only (tarfile r|gz) while the guest got all of
    them (gzip.GzipFile): a second member carried what was never checked."""
    first = make_targz([entry("ok.txt", data=b"checked\n")])
    second = make_targz([entry("passwd", tarfile.SYMTYPE, link="/etc/passwd"),
                         entry("shadow", tarfile.LNKTYPE, link="/etc/shadow"),
                         entry("extra.txt", data=b"never checked\n")])
    dest = f"multi-{uuid.uuid4().hex[:8]}"
    response = upload(api, shared_vm, dest, first + second)
    assert response.status_code == 400, response.json
    assert "after the end of its gzip stream" in response.json["message"]
    assert_nothing_written(api, shared_vm, dest)


def test_data_after_the_end_of_the_archive_is_refused(api, shared_vm):
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info, data = entry("ok.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    hidden = tarfile.TarInfo("evil")
    hidden.type, hidden.linkname = tarfile.SYMTYPE, "/etc"
    dest = f"trailer-{uuid.uuid4().hex[:8]}"
    response = upload(api, shared_vm, dest, gzip.compress(tar.getvalue() + hidden.tobuf()))
    assert response.status_code == 400 and "after its end" in response.json["message"]
    assert_nothing_written(api, shared_vm, dest)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_extended_header_bomb_is_refused(api, shared_vm, kind):
    """A 256 MiB pax or GNU long-name header (~250 KB compressed): tarfile read it whole
    into host memory."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
        bomb = tarfile.TarInfo("././@bomb")
        bomb.type, bomb.size = kind, 256 * 1024 ** 2
        gz.write(bomb.tobuf(format=tarfile.USTAR_FORMAT))
        block = bytes(1024 * 1024)
        for _ in range(256):
            gz.write(block)
        info = tarfile.TarInfo("after.txt")
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    dest = f"bomb-{uuid.uuid4().hex[:8]}"
    response = upload(api, shared_vm, dest, raw.getvalue())
    assert response.status_code == 413 and "extended header" in response.json["message"]
    assert_nothing_written(api, shared_vm, dest)


def test_guest_extracts_the_repacked_pax_archive(api, shared_vm):
    """The guest's tar gets Python's PAX output: long and non-ASCII names come through, the
    setuid bit and the owner do not."""
    long_name = "n" * 150
    tool = entry("tool", data=b"#!/bin/sh\n")
    tool[0].mode, tool[0].uid, tool[0].uname = 0o4755, 0, "root"
    body = make_targz([entry("pax/", tarfile.DIRTYPE), entry(f"pax/{long_name}", data=b"long\n"),
                       entry("pax/ünï.txt", data=b"utf8\n"), tool])
    dest = f"repack-{uuid.uuid4().hex[:8]}"
    response = upload(api, shared_vm, dest, body)
    assert response.status_code == 204, response.json
    out = exec_ok(api, shared_vm["id"], f"cd {dest} && cat pax/{long_name} pax/ünï.txt && "
                                        "stat -c %u tool && (test -u tool && echo SUID || "
                                        "echo plain)")["stdout"].split()
    assert out == ["long", "utf8", "1000", "plain"]


@pytest.mark.parametrize("body, content_type", [(b"not a tarball", "application/gzip"),
                                                (b"", "application/gzip"),
                                                (b"x", "text/plain")])
def test_garbage_uploads_are_400(api, shared_vm, body, content_type):
    response = upload(api, shared_vm, "garbage", body, content_type)
    assert response.status_code == 400 and response.json["message"]


def test_type_conflict_leaves_destination_as_it_was(api, shared_vm):
    exec_ok(api, shared_vm["id"], "mkdir -p clash && echo keep > clash/a && touch clash/z")
    body = make_targz([entry("b.txt"), entry("a/", tarfile.DIRTYPE), entry("a/inner.txt")])
    response = upload(api, shared_vm, "clash", body)
    assert response.status_code == 400 and "different type" in response.json["message"]
    out = exec_ok(api, shared_vm["id"], "ls -A clash; cat clash/a")["stdout"].split()
    assert out == ["a", "z", "keep"]


@pytest.mark.parametrize("dest", ["/etc", "/workspace/../etc", "/home/user/../../tmp", "/tmp"])
def test_dest_outside_workspace_is_400(api, shared_vm, dest):
    response = upload(api, shared_vm, dest, make_targz([entry("a.txt")]))
    assert response.status_code == 400 and "outside the workspace" in response.json["message"]


def test_download_errors(api, shared_vm, services):
    assert download(api, shared_vm, "no/such/file").status_code == 404
    assert download(api, shared_vm, "/etc/passwd").status_code == 400
    exec_ok(api, shared_vm["id"], "ln -sfn /etc /workspace/etc-out")
    assert download(api, shared_vm, "etc-out").status_code == 400
    exec_ok(api, shared_vm["id"], "mkdir -p bigdir && head -c 3000000 /dev/urandom > bigdir/f")
    small = create_app({"TESTING": True, "API_KEY": API_KEY, "MAX_DOWNLOAD_BYTES": 1_000_000})
    response = small.test_client().get(
        f"/v1/vms/{shared_vm['id']}/files/download?path=bigdir", headers=HEADERS)
    assert response.status_code == 413 and "download limit" in response.json["message"]
    small.extensions["rds"].close()
