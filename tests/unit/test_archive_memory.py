"""Hole 2 (header bombs): checking a hostile ~10 MiB upload must not blow up host memory.

tarfile reads GNU long-name/long-link and pax headers whole into memory, and keeps every
member of a stream; before the fix a 200 KB upload took a process to ~1.2 GB. The check runs
in a fresh interpreter so that its peak RSS (VmHWM, which cannot be reset) is its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from itertools import chain, repeat
from pathlib import Path

import pytest

from tests.unit.tarbuild import (BLOCK, END, MIB, extended, gzip_pieces, header, member,
                                 pax_record, zeros)

REPO = Path(__file__).resolve().parents[2]
MAX_RSS_GROWTH = 64 * MIB
ADDRESS_SPACE_CAP = 3 * 1024 * MIB  # the old code would take what it could: keep the host safe

CHECKER = """
import json, resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from app.config import Settings
from app.errors import AppError
from app.services.archives import ArchiveLimits, validate_archive

def status(key):
    with open("/proc/self/status") as lines:
        return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(key))

settings = Settings()
limits = ArchiveLimits(settings.max_upload_uncompressed_bytes, settings.max_upload_entries)
before = status("VmRSS:")
outcomes = []
for path in sys.argv[2:]:
    try:
        with open(path, "rb") as body:
            validate_archive(body, limits)
        outcomes.append("accepted")
    except AppError as exc:
        outcomes.append(exc.http_status)
    except BaseException as exc:
        outcomes.append(type(exc).__name__)
print(json.dumps({"before": before, "peak": status("VmHWM:"), "outcomes": outcomes}))
"""


def hostile_uploads() -> dict[str, bytes]:
    """Each about 10 MiB or less compressed; all of them refused by the fixed check."""
    long_name = extended(tarfile.GNUTYPE_LONGNAME, b"", declared=1024 * MIB)
    groups = 117000  # of 40 records of 114 bytes: 509 MiB
    pax_size = groups * 40 * len(pax_record("k0000000", "v" * 100))
    pax_bomb = extended(tarfile.XHDTYPE, b"", declared=pax_size)
    medium = extended(tarfile.XHDTYPE, pax_record("comment", "c" * 60000))
    return {
        # 1 GiB GNU long name (compresses to ~1 MiB), then plenty of entries.
        "long-name bomb": gzip_pieces(chain(
            [long_name], zeros(1024 * MIB), [member("x", b"x")],
            (member(f"f{i}", b"") for i in range(20000)), [END])),
        # A 509 MiB pax header of records that tarfile parses into a dict.
        "pax bomb": gzip_pieces(chain(
            [pax_bomb], (pax_record(f"k{i:07}", "v" * 100) * 40 for i in range(groups)),
            [bytes(-pax_size % BLOCK), member("x", b"x"), END])),
        # Many headers just under any per-header cap, each with an entry.
        "many medium headers": gzip_pieces(chain(
            (medium + member(f"m{i}", b"") for i in range(12000)), [END])),
        # A chain of 100,000 extended headers before one entry.
        "deep chain": gzip_pieces(chain(
            repeat(extended(tarfile.GNUTYPE_LONGLINK, b"l\0"), 100000),
            [member("x", b"x"), END])),
        # A zero-filled member (8 MiB, within the limits), then 2 GiB more zeros: read as
        # padding after the end of the archive.
        "zero-filled member": gzip_pieces(chain(
            [member("a", b"a"), header("zeros", size=8 * MIB)], zeros(2048 * MIB)), level=1),
    }


@pytest.fixture(scope="module")
def upload_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = []
    for index, (name, body) in enumerate(hostile_uploads().items()):
        assert len(body) <= 12 * MIB, (name, len(body))
        path = folder / f"{index}-{name.replace(' ', '-')}.tar.gz"
        path.write_bytes(body)
        paths.append(path)
    return paths


def test_header_bomb_check_keeps_host_memory_bounded(upload_files):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHECKER, str(ADDRESS_SPACE_CAP),
                           *map(str, upload_files)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    growth = report["peak"] - report["before"]
    print(f"RSS before {report['before'] / MIB:.1f} MiB, peak {report['peak'] / MIB:.1f} MiB, "
          f"growth {growth / MIB:.1f} MiB, outcomes {report['outcomes']}")
    assert all(outcome in (400, 413) for outcome in report["outcomes"]), report
    assert growth <= MAX_RSS_GROWTH, report
