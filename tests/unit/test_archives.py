"""The upload check and re-pack (app.services.archives): every rule, and what the guest gets.

Tests named after a hole (``multi_member``, ``header_bomb``, ...) failed before the re-pack:
the guest then got ``gzip.GzipFile``'s view of the upload, not the one that was checked.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from app.errors import AppError
from app.services import archives
from app.services.archives import ArchiveLimits
from tests.unit.tarbuild import (BLOCK, END, MIB, extended, gzip_pieces, header, member,
                                 pax_record, targz, zeros)

LIMITS = ArchiveLimits(max_uncompressed_bytes=MIB, max_entries=50)


def check(body: bytes, limits: ArchiveLimits = LIMITS) -> archives.ArchiveSummary:
    return archives.validate_archive(io.BytesIO(body), limits)


def repack(body: bytes, limits: ArchiveLimits = LIMITS) -> bytes:
    sink = io.BytesIO()
    archives.repack_archive(io.BytesIO(body), limits, sink)
    return sink.getvalue()


def refused(body: bytes, status: int = 400, limits: ArchiveLimits = LIMITS) -> str:
    with pytest.raises(AppError) as caught:
        check(body, limits)
    assert caught.value.http_status == status, caught.value.message
    return caught.value.message


def entries(tar: bytes) -> list[tuple[str, bytes, int, str, bytes | None]]:
    """(name, type, mode, linkname, data) of every entry of an uncompressed tar."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        for info in archive:
            data = archive.extractfile(info).read() if info.isreg() else None
            found.append((info.name, info.type, info.mode, info.linkname, data))
    return found


# The rules that were there before ###########################################################

HOSTILE = {
    "absolute path": member("/etc/evil", b"x"),
    "drive letter": member("c:evil", b"x"),
    "dotdot escape": member("ok.txt", b"x") + member("../escape.txt", b"x"),
    "backslash dotdot": member("a\\..\\..\\x", b"x"),
    "symlink out": member("out", kind=tarfile.SYMTYPE, link="/etc"),
    "relative symlink out": member("out", kind=tarfile.SYMTYPE, link="../../etc"),
    "write through symlink": member("in", kind=tarfile.SYMTYPE, link=".")
    + member("in/file.txt", b"x"),
    "chained symlinks": member("a", kind=tarfile.SYMTYPE, link=".")
    + member("a/b", kind=tarfile.SYMTYPE, link=".."),
    "replace a symlink": member("s", kind=tarfile.SYMTYPE, link="t") + member("s", b"x"),
    "below a deep symlink": member("a/b/s", kind=tarfile.SYMTYPE, link="..")
    + member("a/b/./s/c/d", b"x"),
    "hard link to shadow": member("shadow", kind=tarfile.LNKTYPE, link="/etc/shadow"),
    "hard link inside": member("f.txt", b"x") + member("g.txt", kind=tarfile.LNKTYPE,
                                                       link="f.txt"),
    "device node": member("dev", kind=tarfile.CHRTYPE),
    "block device": member("blk", kind=tarfile.BLKTYPE),
    "fifo": member("pipe", kind=tarfile.FIFOTYPE),
    "newline in name": member("a\nb", b"x"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_entries_are_refused(case):
    assert "archive entry" in refused(targz(HOSTILE[case]))


def test_a_plain_archive_passes():
    body = targz(member("proj", kind=tarfile.DIRTYPE, mode=0o755),
                 member("proj/a.txt", b"alpha\n"),
                 member("proj/link", kind=tarfile.SYMTYPE, link="a.txt"),
                 member("proj/up", kind=tarfile.SYMTYPE, link="../proj/a.txt"))
    summary = check(body)
    assert (summary.entries, summary.uncompressed_bytes) == (4, 6)


@pytest.mark.parametrize("body, words", [
    (b"not a tarball", "gzip"),
    (targz(b"", end=True), "empty"),
    (targz(b"garbage" * 100, end=False), "not a valid tar"),
])
def test_corrupt_or_empty_uploads_are_400(body, words):
    assert words in refused(body)


def test_entry_count_and_size_limits_are_413():
    many = targz(*(member(f"f{i}", b"") for i in range(51)))
    assert "entries" in refused(many, 413)
    assert "expands" in refused(targz(member("big", bytes(MIB + 1))), 413)


def test_a_zip_bomb_is_refused_from_its_header():
    """A 1 GiB member announced in its header: refused before it is inflated."""
    body = gzip_pieces([header("zeros.bin", size=1024 ** 3), *zeros(64 * MIB)])
    assert "expands" in refused(body, 413)


# Hole 1: what is checked is what the guest gets ###########################################

def test_multi_member_gzip_is_refused():
    """gzip.GzipFile (what went to the guest) reads every member; tarfile's r|gz only the
    first. A second member could carry anything."""
    second = targz(member("passwd", kind=tarfile.SYMTYPE, link="/etc/passwd"),
                   member("shadow", kind=tarfile.LNKTYPE, link="/etc/shadow"))
    message = refused(targz(member("a.txt", b"fine\n")) + second)
    assert "after the end of its gzip stream" in message


def test_multi_member_gzip_with_empty_second_member_is_refused():
    refused(targz(member("a.txt", b"fine\n")) + targz(b"", end=False))


def test_multi_member_trailing_garbage_after_gzip_is_refused():
    message = refused(targz(member("a.txt", b"fine\n")) + b"\x00trailing")
    assert "after the end of its gzip stream" in message


def test_multi_member_truncated_gzip_is_refused():
    body = targz(member("a.txt", b"x" * 5000))
    refused(body[:-12])


def test_multi_member_data_after_end_of_archive_is_refused():
    """tarfile stops at the end-of-archive blocks; GNU tar might not (-i), so nothing
    but zeros may follow them."""
    hidden = member("evil", kind=tarfile.SYMTYPE, link="/etc")
    assert "after its end" in refused(targz(member("a.txt", b"x"), END, hidden, end=False))


def test_zero_padding_after_end_of_archive_is_accepted():
    """GNU tar pads its output to 10 KiB records."""
    assert check(targz(member("a.txt", b"x"), bytes(20 * BLOCK))).entries == 1


def test_multi_member_damaged_header_after_first_entry_is_refused():
    """tarfile takes a bad header after the first entry for the end of the archive."""
    damaged = bytearray(member("evil", kind=tarfile.SYMTYPE, link="/etc"))
    damaged[148:156] = b"0000000\0"  # a wrong checksum
    refused(targz(member("a.txt", b"x"), bytes(damaged)))


@pytest.mark.parametrize("kind, words", [
    (tarfile.CONTTYPE, "type"),
    (tarfile.GNUTYPE_SPARSE, "sparse"),
    (b"Z", "type"),
    (b"V", "type"),
])
def test_multi_member_only_files_dirs_and_symlinks_pass(kind, words):
    """CONTTYPE and GNU sparse count as regular files for tarfile (isfile())."""
    assert words in refused(targz(member("odd", b"data", kind=kind)))


@pytest.mark.parametrize("pax", [
    {"GNU.sparse.map": "0,4", "GNU.sparse.realsize": "4"},
    {"GNU.sparse.size": "4", "GNU.sparse.numblocks": "1"},
    {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "real"},
    {"GNU.sparse.name": "other-name"},
])
def test_multi_member_pax_gnu_sparse_is_refused(pax):
    body = targz(header("sparse", size=BLOCK, fmt=tarfile.PAX_FORMAT, pax=pax),
                 b"4\n0\n4\n" + bytes(BLOCK - 6))
    assert "sparse" in refused(body)


@pytest.mark.parametrize("name, link", [
    ("bad-\udcff-name", ""),  # the byte 0xff: not UTF-8
    ("s", "bad-\udcfe-target"),
])
def test_multi_member_names_must_be_utf8(name, link):
    kind = tarfile.SYMTYPE if link else tarfile.REGTYPE
    assert "UTF-8" in refused(targz(member(name, b"x", kind=kind, link=link)))


def test_multi_member_pax_binary_names_must_be_utf8_too():
    pax = extended(tarfile.XHDTYPE, pax_record("hdrcharset", "BINARY")
                   + pax_record("path", b"caf\xe9"))
    assert "UTF-8" in refused(targz(pax + member("placeholder", b"x")))


def test_multi_member_names_up_to_4096_bytes():
    name = "d/" * 1000 + "x" * 2096  # 4096 bytes
    assert check(targz(member(name, b"x"))).entries == 1
    assert "long" in refused(targz(member(name + "y", b"x")))
    assert "long" in refused(targz(member("s", kind=tarfile.SYMTYPE, link="a/" * 2049)))


@pytest.mark.parametrize("record", [pax_record("path", b"a\0b"),
                                    pax_record("path", b"a\nb"),
                                    pax_record("linkpath", b"t\0../../etc")])
def test_multi_member_control_characters_are_refused(record):
    body = targz(extended(tarfile.XHDTYPE, record) + member("s", kind=tarfile.SYMTYPE,
                                                            link="t"))
    assert "control character" in refused(body)


def test_multi_member_negative_size_is_refused():
    body = targz(extended(tarfile.XHDTYPE, pax_record("size", "-512"))
                 + member("f", b"x" * 10))
    refused(body)


def test_symlink_target_may_not_climb_back_out_of_a_link():
    """``b -> a/..`` looks like ``.`` but resolves through ``a -> .`` to the parent."""
    body = targz(member("a", kind=tarfile.SYMTYPE, link="."),
                 member("b", kind=tarfile.SYMTYPE, link="a/.."))
    assert "archive entry 'b'" in refused(body)
    assert check(targz(member("d/l", kind=tarfile.SYMTYPE, link="../d/./x"))).entries == 1


def test_multi_member_repacked_archive_holds_only_clean_entries():
    body = targz(
        extended(tarfile.XGLTYPE, pax_record("comment", "global")),
        member("./proj/", kind=tarfile.DIRTYPE, mode=0o2775),
        member("proj//run.sh", b"#!/bin/sh\n", mode=0o4755, mtime=-5),
        member("proj/old", b"v7", kind=tarfile.AREGTYPE, mtime=2 ** 40),
        header("proj/" + "long" * 40, size=3, fmt=tarfile.PAX_FORMAT,
               pax={"uname": "root", "comment": "dropped", "mtime": "nan"}) + b"abc"
        + bytes(BLOCK - 3),
        member("proj/link", kind=tarfile.SYMTYPE, link="run.sh", mode=0o777),
        member("proj/ünï", b"utf8"))
    output = repack(body)
    assert entries(output) == [
        ("proj", tarfile.DIRTYPE, 0o775, "", None),
        ("proj/run.sh", tarfile.REGTYPE, 0o755, "", b"#!/bin/sh\n"),
        ("proj/old", tarfile.REGTYPE, 0o644, "", b"v7"),
        ("proj/" + "long" * 40, tarfile.REGTYPE, 0o644, "", b"abc"),
        ("proj/link", tarfile.SYMTYPE, 0o777, "run.sh", None),
        ("proj/ünï", tarfile.REGTYPE, 0o644, "", b"utf8"),
    ]
    with tarfile.open(fileobj=io.BytesIO(output), mode="r:") as archive:
        infos = archive.getmembers()
        assert archive.pax_headers == {}
    assert {(i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0, "", "")}
    assert [i.mtime for i in infos] == [0, 0, 8 ** 11 - 1, 0, 0, 0]
    assert set().union(*(i.pax_headers for i in infos)) <= {"path"}


def test_multi_member_repack_is_deterministic_and_validate_sends_nothing():
    body = targz(member("a.txt", b"a" * 70000), member("d", kind=tarfile.DIRTYPE))
    assert repack(body) == repack(body)
    summary = archives.repack_archive(io.BytesIO(body), LIMITS, io.BytesIO())
    assert summary == check(body)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_repacked_archive_extracts_with_the_guests_tar_flags(tmp_path):
    """guest/rootfs/usr/local/lib/rds/untar runs exactly this tar command."""
    output = repack(targz(member("dir", kind=tarfile.DIRTYPE, mode=0o755),
                          member("dir/" + "n" * 150, b"long name\n"),
                          member("dir/ünï", b"utf8\n"),
                          member("dir/l", kind=tarfile.SYMTYPE, link="ünï")))
    subprocess.run(["tar", "-xf", "-", "-C", str(tmp_path), "--no-same-owner",
                    "--no-same-permissions"], input=output, check=True, timeout=30)
    assert (tmp_path / "dir" / ("n" * 150)).read_bytes() == b"long name\n"
    assert (tmp_path / "dir" / "l").read_bytes() == b"utf8\n"


class FailingSource:
    """The spooled upload, failing (like a disk) once ``after`` bytes were read."""

    def __init__(self, data: bytes, after: int) -> None:
        self._data = io.BytesIO(data)
        self._left = after

    def read(self, size: int) -> bytes:
        if self._left <= 0:
            raise OSError("spool read failed")
        chunk = self._data.read(min(size, self._left))
        self._left -= len(chunk)
        return chunk


def gnu_tar_extracts(tar: bytes, folder) -> bool:
    done = subprocess.run(["tar", "-xf", "-", "-C", str(folder), "--no-same-owner",
                           "--no-same-permissions"], input=tar, capture_output=True,
                          timeout=30, check=False)
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_multi_member_output_that_stops_inside_an_entry_does_not_extract(tmp_path):
    body = targz(member("a.txt", b"a"), member("random.bin", os.urandom(300_000)))
    sink = io.BytesIO()
    with pytest.raises(OSError):
        archives.repack_archive(FailingSource(body, len(body) // 2), LIMITS, sink)
    assert sink.getvalue() and not gnu_tar_extracts(sink.getvalue(), tmp_path)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_multi_member_output_that_stops_between_entries_does_not_extract(tmp_path,
                                                                          monkeypatch):
    """GNU tar takes a tar cut between two entries for a complete one: it gets a block that
    is not a header where the next one belongs."""
    admit = archives._Ledger.admit

    def failing_admit(ledger, member):
        if ledger.entries == 2:
            raise RuntimeError("third entry")
        return admit(ledger, member)

    monkeypatch.setattr(archives._Ledger, "admit", failing_admit)
    body = targz(member("a.txt", b"a"), member("d", kind=tarfile.DIRTYPE), member("c", b"c"))
    sink = io.BytesIO()
    with pytest.raises(RuntimeError):
        archives.repack_archive(io.BytesIO(body), LIMITS, sink)
    output = sink.getvalue()
    assert output.endswith(b"\xff" * BLOCK)
    assert not gnu_tar_extracts(output, tmp_path)
    (tmp_path / "without").mkdir()
    assert gnu_tar_extracts(output[:-BLOCK], tmp_path / "without")  # GNU tar's own verdict


# Hole 2: header bombs ######################################################################

@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                                  tarfile.GNUTYPE_LONGLINK])
def test_header_bomb_oversized_extended_header_is_refused(kind):
    """tarfile reads an extended header whole into memory: 64 MiB here, 1 GiB+ in the wild."""
    body = gzip_pieces([extended(kind, b"", declared=64 * MIB), *zeros(64 * MIB),
                        member("x", b"x"), END])
    assert "extended header" in refused(body, 413)


def test_header_bomb_long_chain_of_extended_headers_is_refused():
    chain = extended(tarfile.GNUTYPE_LONGNAME, b"name\0") * 20
    assert "extended headers" in refused(targz(chain + member("x", b"x")))


def test_header_bomb_deep_chain_is_refused_without_recursion_error():
    chain = extended(tarfile.XHDTYPE, pax_record("comment", "x")) * 5000
    refused(targz(chain + member("x", b"x")))


def test_header_bomb_global_headers_are_bounded_in_total():
    """Global pax headers add up (and are applied to every later entry)."""
    globals_ = b"".join(extended(tarfile.XGLTYPE, pax_record(f"k{i}", "v" * 60000))
                        for i in range(20))
    assert "global" in refused(targz(globals_ + member("x", b"x")), 413)


def test_header_bomb_inflated_bytes_are_bounded():
    """Zeros after the end: not an entry, but they have to be read to be checked."""
    body = gzip_pieces([member("a.txt", b"x"), *zeros(64 * MIB)])
    assert "expands" in refused(body, 413)


def test_header_bomb_many_small_headers_count_against_the_budget():
    """Header blocks are inflated bytes too: a flood of comment records is refused."""
    flood = extended(tarfile.XHDTYPE, pax_record("comment", "c" * 60000)) + member("x", b"")
    assert "expands" in refused(targz(*[flood] * 40), 413)
