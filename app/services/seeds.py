"""Memory snapshots ("seeds"): where saved, booted, idle guests live and which one fits a VM.

A seed is one template build in one VM shape (cpu, memMb, disk size), booted once and saved
with libvirt. VMs restored from it skip the boot. On disk, ``<storage_root>/seeds/<key>/``:

- ``disk.qcow2``: the seed's overlay on the template image, read-only once saved; every VM
  restored from the seed has its own overlay backed by it (the saved memory matches it).
- ``state.sav``: the libvirt save image (domain XML + QEMU migration stream).
- ``seed.json``: what the seed is, written last: a directory without it is not a seed.

The key contains a digest of everything the saved guest depends on (image build, template
XML and kernel command line, the devices :mod:`app.virt.domain_xml` gives a VM, accelerator,
QEMU version, format version), so a rebuilt image or
an edited template simply has no seed yet: VMs cold-boot until the new one is saved, and the
old one is removed once no VM uses its disk any more.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import time
import typing as t
from pathlib import Path

from app.clock import now_iso
from app.models import Template
from app.persist import SEED_FIELDS, from_json, to_json
from app.services.addresses import allocation_lock
from app.virt.domain_xml import device_fingerprint
from app.virt.qemu_access import share_with_qemu
from app.services.templates import ImageBuild

log = logging.getLogger(__name__)

SEED_FORMAT = "3"  # bump when the way seeds are made changes: old ones are rebuilt
SEED_META = "seed.json"
STALE_BUILD_S = 900.0  # a half-built seed directory older than this is left by a crash


@dataclasses.dataclass(frozen=True)
class Seed:
    key: str
    path: Path
    template_id: str
    cpu: int
    mem_mb: int
    disk_size_mb: int
    image_path: str
    created_at: str = ""

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def state(self) -> Path:
        return self.path / "state.sav"


def seed_mac(key: str) -> str:
    """The MAC of the seed's guest while it is made (never on a network: from its key)."""
    return "52:54:00:fe:" + ":".join(f"{b:02x}" for b in
                                     bytes.fromhex(key.rsplit("-", 1)[-1][:4]))


class SeedStore:
    """Finds, names, locks and prunes seeds; :class:`~app.services.vms.VmService` makes them."""

    def __init__(self, seeds_dir: Path, domain_type: str,
                 emulator_version: t.Callable[[], str]) -> None:
        self.seeds_dir = seeds_dir
        self.domain_type = domain_type
        self._emulator_version = emulator_version
        self._version: str | None = None

    def key(self, template: Template, build: ImageBuild, cpu: int, mem_mb: int,
            disk_size_mb: int, emulator_version: str | None = None) -> str:
        """The seed's name: what the saved guest depends on, digested.

        :param emulator_version: the QEMU version of the host that saves and restores it
            (another host's, issue 17); this host's by default.
        """
        if emulator_version is None:
            if self._version is None:
                self._version = self._emulator_version()
            emulator_version = self._version
        digest = hashlib.sha256("\0".join([
            SEED_FORMAT, self.domain_type, emulator_version, str(build.path),
            template.domain_xml,
            device_fingerprint(template.domain_xml, self.domain_type),
            template.kernel_cmdline, str(disk_size_mb)]).encode()).hexdigest()[:10]
        return f"{template.id}-{cpu}c-{mem_mb}m-{digest}"

    def find(self, template: Template, build: ImageBuild, cpu: int, mem_mb: int,
             disk_size_mb: int) -> Seed | None:
        """The complete seed for this template build and shape, if one was saved."""
        return self.load(self.key(template, build, cpu, mem_mb, disk_size_mb))

    def load(self, key: str) -> Seed | None:
        path = self.seeds_dir / key
        try:
            info = json.loads((path / SEED_META).read_text())
            seed = from_json(Seed, SEED_FIELDS, info, key=key, path=path)
        except (OSError, ValueError, TypeError):
            return None
        if not (seed.state.is_file() and seed.disk.is_file()):
            return None
        share_with_qemu(path)  # seeds saved by versions that ran QEMU as root
        return seed

    def building_dir(self, key: str) -> Path:
        return self.seeds_dir / f".{key}.building"

    def publish(self, key: str, staging: Path, template: Template, cpu: int, mem_mb: int,
                disk_size_mb: int, image_path: str) -> Seed:
        """Mark ``staging`` complete and move it into place (atomic rename)."""
        seed = Seed(key=key, path=self.seeds_dir / key, template_id=template.id, cpu=cpu,
                    mem_mb=mem_mb, disk_size_mb=disk_size_mb, image_path=image_path,
                    created_at=now_iso())
        (staging / SEED_META).write_text(json.dumps(to_json(seed, SEED_FIELDS), indent=2))
        (staging / "disk.qcow2").chmod(0o444)
        share_with_qemu(staging)  # its disk backs clones' disks: QEMU must reach it
        target = self.seeds_dir / key
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        loaded = self.load(key)
        assert loaded is not None
        return loaded

    @contextlib.contextmanager
    def build_lock(self, key: str, timeout: float) -> t.Iterator[None]:
        """Host-wide: one process builds a given seed at a time."""
        self.seeds_dir.mkdir(parents=True, exist_ok=True)
        share_with_qemu(self.seeds_dir)
        with allocation_lock(self.seeds_dir / f".{key}.lock", timeout):
            yield

    def all(self) -> list[Seed]:
        if not self.seeds_dir.is_dir():
            return []
        return [seed for seed in (self.load(p.name) for p in sorted(self.seeds_dir.iterdir())
                                  if not p.name.startswith(".")) if seed]

    def remove_template(self, template_id: str) -> list[str]:
        """Remove every seed of a template (a deleted image's: no VM may use them)."""
        removed = []
        for seed in self.all():
            if seed.template_id == template_id:
                shutil.rmtree(seed.path, ignore_errors=True)
                removed.append(seed.key)
        return removed

    def prune(self, current_keys: set[str], used_keys: set[str]) -> list[str]:
        """Remove seeds that are neither current nor backing a VM, and stale half-builds."""
        removed = []
        if not self.seeds_dir.is_dir():
            return removed
        now = time.time()
        for path in self.seeds_dir.iterdir():
            name = path.name
            if name.endswith(".building") and path.is_dir():
                if now - path.stat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(name)
            elif not name.startswith(".") and path.is_dir() and \
                    name not in current_keys and name not in used_keys:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        for name in removed:
            log.info("removed memory snapshot %s (outdated, unused)", name)
        return removed
