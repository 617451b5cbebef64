"""tar.gz both ways: the streamed upload archive, and a download extraction that refuses
anything landing outside its target."""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import typing as t
from pathlib import Path

import pytest

from rds_client import TransportError, UnsafeArchive
from rds_client.archive import ChunkReader, extract_tar_gz, tar_gz_chunks

MIB = 1024 * 1024


def members(chunks: t.Iterable[bytes]) -> dict[str, tarfile.TarInfo]:
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def read(chunks: t.Iterable[bytes], name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        file = tar.extractfile(name)
        assert file is not None
        return file.read()


# ---- upload ----------------------------------------------------------------------------------

def test_a_directory_is_archived_by_its_contents(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("print(1)\n")
    (tmp_path / "src" / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "src" / "run.sh").chmod(0o755)
    (tmp_path / "src" / "link").symlink_to("run.sh")
    (tmp_path / "src" / "ünï cödé").write_text("x")
    got = members(tar_gz_chunks(tmp_path / "src"))
    assert sorted(got) == ["link", "pkg", "pkg/mod.py", "run.sh", "ünï cödé"]
    assert got["pkg"].isdir() and got["link"].issym() and got["link"].linkname == "run.sh"
    assert got["run.sh"].mode == 0o755 and got["pkg/mod.py"].size == 9
    assert got["run.sh"].uname == "" and got["run.sh"].uid == 0  # nothing of this machine
    assert read(tar_gz_chunks(tmp_path / "src"), "pkg/mod.py") == b"print(1)\n"


def test_a_file_is_archived_under_its_own_name(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"a" * 513)
    assert list(members(tar_gz_chunks(tmp_path / "notes.txt"))) == ["notes.txt"]
    assert read(tar_gz_chunks(tmp_path / "notes.txt"), "notes.txt") == b"a" * 513


def test_an_empty_directory_is_a_valid_empty_archive(tmp_path: Path) -> None:
    assert members(tar_gz_chunks(tmp_path)) == {}


def test_the_archive_streams_in_pieces(tmp_path: Path) -> None:
    """A big file goes out in many chunks, none of them the whole file."""
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * MIB))
    chunks = list(tar_gz_chunks(tmp_path))
    assert len(chunks) > 10 and max(map(len, chunks)) < MIB
    assert gzip.decompress(b"".join(chunks))[512:512 + 3 * MIB] == (tmp_path / "big.bin") \
        .read_bytes()


def test_special_files_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        list(tar_gz_chunks(tmp_path))


def test_long_names_survive(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_text("x")
    names = members(tar_gz_chunks(tmp_path))
    assert f"{'d' * 90}/{'e' * 90}/{'f' * 120}" in names


# ---- download --------------------------------------------------------------------------------

def archive(*entries: tarfile.TarInfo | tuple[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
            else:
                tar.addfile(entry)
    buffer.seek(0)
    return buffer


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


def test_a_good_archive_extracts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = extract_tar_gz(archive(
        entry("./", tarfile.DIRTYPE), entry("./dir", tarfile.DIRTYPE),
        ("./dir/a.txt", b"hello"), entry("./dir/link", tarfile.SYMTYPE, "a.txt"),
        entry("./dir/hard", tarfile.LNKTYPE, "./dir/a.txt"),
        entry("up", tarfile.SYMTYPE, "dir/../dir")), out)
    assert (out / "dir" / "a.txt").read_bytes() == b"hello"
    assert os.readlink(out / "dir" / "link") == "a.txt"
    assert (out / "dir" / "hard").read_bytes() == b"hello"
    assert os.path.samefile(out / "dir" / "hard", out / "dir" / "a.txt")
    assert written == [out / "dir", out / "dir" / "a.txt", out / "dir" / "link",
                       out / "dir" / "hard", out / "up"]


def test_existing_files_are_replaced_and_others_kept(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "keep.txt").write_text("kept")
    extract_tar_gz(archive(("a.txt", b"new")), tmp_path)
    assert (tmp_path / "a.txt").read_text() == "new"
    assert (tmp_path / "keep.txt").read_text() == "kept"


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    info = tarfile.TarInfo("s")
    info.mode = 0o4755
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(info, io.BytesIO(b""))
    buffer.seek(0)
    extract_tar_gz(buffer, tmp_path)
    assert (tmp_path / "s").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize(("entries", "reason"), [
    ([("/etc/passwd", b"x")], "absolute path"),
    ([("../escape", b"x")], "'..'"),
    ([("a/../../escape", b"x")], "'..'"),
    ([entry("abs", tarfile.SYMTYPE, "/etc")], "absolute or empty"),
    ([entry("up", tarfile.SYMTYPE, "../..")], "points outside"),
    ([entry("d", tarfile.DIRTYPE), entry("d/up", tarfile.SYMTYPE, "../../x")],
     "points outside"),
    # A link to the target itself is fine, but a link beside it then leads out.
    ([entry("self", tarfile.SYMTYPE, "."), entry("self/out", tarfile.SYMTYPE, "../x")],
     "points outside"),
    ([entry("hard", tarfile.LNKTYPE, "/etc/passwd")], "absolute path"),
    ([entry("hard", tarfile.LNKTYPE, "missing")], "not a file extracted before"),
    ([entry("dev", tarfile.CHRTYPE)], "special files"),
    ([entry("fifo", tarfile.FIFOTYPE)], "special files"),
    ([entry("new/dir/fifo", tarfile.FIFOTYPE)], "special files"),
], ids=["absolute", "dotdot", "dotdot-inside", "symlink-absolute", "symlink-up",
        "symlink-up-from-subdir", "symlink-through-link", "hardlink-absolute",
        "hardlink-missing", "device", "fifo", "fifo-in-new-dirs"])
def test_unsafe_entries_are_refused(tmp_path: Path, entries: list, reason: str) -> None:
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchive, match=reason):
        extract_tar_gz(archive(*entries), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    if len(entries) == 1:  # nothing at all was made for the refused entry
        assert list(target.iterdir()) == []


def test_no_write_through_an_existing_link_out(tmp_path: Path) -> None:
    """A symlink already in the target directory that leads out is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    with pytest.raises(UnsafeArchive, match="link leading out"):
        extract_tar_gz(archive(("sub/pwned", b"x")), target)
    assert list(outside.iterdir()) == []


def test_a_file_entry_replaces_a_link_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("safe")
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.txt").symlink_to(victim)
    extract_tar_gz(archive(("a.txt", b"new")), target)
    assert victim.read_text() == "safe"
    assert not (target / "a.txt").is_symlink() and (target / "a.txt").read_text() == "new"


def test_a_directory_entry_over_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "d").symlink_to(tmp_path)
    with pytest.raises(UnsafeArchive, match="non-directory"):
        extract_tar_gz(archive(entry("d", tarfile.DIRTYPE)), tmp_path / "t")


@pytest.mark.parametrize("cut", [0, 10, 100, -30, -4])
def test_a_truncated_archive_is_a_transport_error(tmp_path: Path, cut: int) -> None:
    """Also when the cut falls after the last member (-30: the end blocks and the gzip
    trailer missing; -4: only the trailer's size field)."""
    data = archive(("a.bin", os.urandom(20_000))).getvalue()
    with pytest.raises(TransportError, match="truncated"):
        extract_tar_gz(io.BytesIO(data[:cut]), tmp_path)


def test_a_corrupt_crc_is_a_transport_error(tmp_path: Path) -> None:
    data = bytearray(archive(("a.txt", b"hello")).getvalue())
    data[-8] ^= 0xFF  # the CRC32 of the gzip trailer
    with pytest.raises(TransportError, match="corrupt"):
        extract_tar_gz(io.BytesIO(bytes(data)), tmp_path)


def test_zero_padding_after_the_gzip_end_is_fine(tmp_path: Path) -> None:
    data = archive(("a.txt", b"hello")).getvalue() + bytes(1000)
    extract_tar_gz(ChunkReader([data[:-500], data[-500:]]), tmp_path)
    assert (tmp_path / "a.txt").read_bytes() == b"hello"


def test_garbage_after_the_gzip_end_is_corrupt(tmp_path: Path) -> None:
    data = archive(("a.txt", b"hello")).getvalue() + b"garbage"
    with pytest.raises(TransportError, match="corrupt"):
        extract_tar_gz(io.BytesIO(data), tmp_path)


def test_a_file_given_as_a_link_is_sent_as_the_file(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("content")
    (tmp_path / "alias.txt").symlink_to("real.txt")
    got = members(tar_gz_chunks(tmp_path / "alias.txt"))
    assert list(got) == ["alias.txt"] and got["alias.txt"].isreg()
    assert read(tar_gz_chunks(tmp_path / "alias.txt"), "alias.txt") == b"content"


def test_concatenated_gzip_members_are_one_stream(tmp_path: Path) -> None:
    data = archive(("a.txt", b"hello")).getvalue()
    raw = gzip.decompress(data)
    extract_tar_gz(io.BytesIO(gzip.compress(raw[:1024]) + gzip.compress(raw[1024:])), tmp_path)
    assert (tmp_path / "a.txt").read_bytes() == b"hello"


def test_chunk_reader_reads_across_chunk_bounds(tmp_path: Path) -> None:
    data = archive(("a.txt", b"hello" * 1000)).getvalue()
    reader = ChunkReader(data[i:i + 7] for i in range(0, len(data), 7))
    extract_tar_gz(reader, tmp_path)
    assert (tmp_path / "a.txt").read_bytes() == b"hello" * 1000
