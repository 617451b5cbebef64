"""Making memory snapshots (seeds): boot the template once per shape, wait until the guest is
idle, save it; and remove the ones no current template build or VM needs.

Where seeds live and how they are named is :class:`~app.services.seeds.SeedStore`'s business;
restoring VMs from them is the
:class:`~app.services.provisioner.Provisioner`'s. The seed guest is booted with
no address (eth0 stays down), a tap that is never plugged into any bridge (no frame can leave
or reach it) and its own throw-away host key, and reached only through the guest agent.
"""
from __future__ import annotations

import logging
import shutil
import time
import typing as t
import uuid

from app.clock import now_iso
from app.config import Settings
from app.errors import GuestUnreachable, HypervisorError
from app.models import NAME_PREFIX, ProvisionMode, Template, VmRecord, VmRole
from app.services.ports import VmPorts
from app.services.provisioner import AGENT_TIMEOUT_S, RESTORE_TIMEOUT_S
from app.services.records import VmRecords
from app.services.seeds import Seed, SeedStore, seed_mac
from app.services.teardown import Cleanup, VmTeardown
from app.services.templates import ImageBuild, TemplateCatalog, default_disk_size_mb
from app.services.vm_files import DISK, VmFiles
from app.sshkeys import generate_keypair
from app.virt import disks, save_image
from app.virt.qemu_access import prepare_vm_dir

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
SETTLE = "/usr/local/lib/rds/settle"  # in the guest image: prepares an idle guest to be saved


class SeedBuilder:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, templates: TemplateCatalog,
                 store: SeedStore, records: VmRecords, files: VmFiles, ports: VmPorts,
                 teardown: VmTeardown) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.templates = templates
        self.store = store
        self.records = records
        self.files = files
        self.ports = ports
        self.teardown = teardown

    def ensure(self, cpu: int, mem_mb: int, image_id: str | None = None) -> Seed:
        """The memory snapshot for this template and shape, booted and saved if missing.

        Safe to call from several processes at once: one builds, the others wait for it.
        """
        template = self.templates.get(image_id)
        return self.ensure_for(template, self.templates.current_build(template), cpu, mem_mb)

    def ensure_for(self, template: Template, build: ImageBuild, cpu: int, mem_mb: int) -> Seed:
        """:meth:`ensure` for a given template build (an image's build checks its new build
        this way before the image is READY)."""
        disk_size_mb = default_disk_size_mb(template, build)
        key = self.store.key(template, build, cpu, mem_mb, disk_size_mb)
        seed = self.store.load(key)
        if seed is not None:
            return seed
        with self.store.build_lock(key, self.settings.boot_timeout_s + RESTORE_TIMEOUT_S):
            seed = self.store.load(key)
            if seed is None:
                seed = self._build(key, template, build, cpu, mem_mb, disk_size_mb)
        return seed

    def _build(self, key: str, template: Template, build: ImageBuild, cpu: int,
                    mem_mb: int, disk_size_mb: int) -> Seed:
        """Boot the template with no network identity, wait until it is idle, save it."""
        started = time.monotonic()
        staging = self.store.building_dir(key)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700, parents=True)
        prepare_vm_dir(staging)  # the seed VM runs from it (its disk then backs clones')
        name = f"{NAME_PREFIX}seed-{key}"
        self._remove_stale_domain(name)
        host_key = generate_keypair()
        record = VmRecord(
            id=str(uuid.uuid4()), name=name, cpu=cpu, mem_mb=mem_mb, guest_ip="",
            mac=seed_mac(key),
            allow_ips=(), outbound_internet=False, image_id=template.id,
            image_path=str(build.path), disk_size_mb=disk_size_mb, created_at=now_iso(),
            provision_mode=ProvisionMode.BOOT, host_key=host_key.public_openssh,
            role=VmRole.SEED)
        log.info("building memory snapshot seed=%s", key)
        # Undone on success too: the seed is files only, its domain and port go.
        with Cleanup(f"build of memory snapshot {key}") as cleanup:
            cleanup.add("files", shutil.rmtree, staging, True)
            disks.create_overlay(build.disk, staging / DISK, disk_size_mb)
            self.files.write_keys(staging, host_key)
            cleanup.add("domain", self.teardown.domain, record.id)
            self.hypervisor.define_domain(
                self.files.domain_xml(record, template.domain_xml, build, staging,
                                      template=template))
            # After the domain (the orphan sweep keeps the ports of existing domains); never
            # connected: the seed's tap stays down and off the bridge.
            cleanup.add("port", self.teardown.port, name)
            self.ports.create(record)
            self.hypervisor.start_domain(record.id)
            wait_idle(self.hypervisor, record, self.settings.boot_timeout_s)
            self.hypervisor.save_domain(record.id, str(staging / "state.sav"),
                                        RESTORE_TIMEOUT_S)
            save_image.read_header(staging / "state.sav")  # fail here, not in every restore
            seed = self.store.publish(key, staging, template, cpu, mem_mb, disk_size_mb,
                                      str(build.path))
            cleanup.run()
        log.info("memory snapshot saved seed=%s seconds=%.1f", key, time.monotonic() - started)
        return seed

    def _remove_stale_domain(self, name: str) -> None:
        """A seed domain of this name left behind by a crash: remove it and what it owns."""
        for record, _info in self.records.all():
            if record.name == name:
                log.warning("removing stale domain %s", name)
                self.teardown.remove(record)

    def prune(self) -> list[str]:
        """Remove memory snapshots of old image builds/templates once no VM is backed by them."""
        current = {self.store.key(template, build, cpu, mem,
                                  default_disk_size_mb(template, build))
                   for template, build in self.templates.current_builds(building=True)
                   for cpu, mem in self.settings.snapshot_shape_list}
        used = {record.seed for record, _info in self.records.all() if record.seed}
        return self.store.prune(current, used)


def wait_idle(hypervisor: Hypervisor, record: VmRecord, boot_timeout_s: float) -> None:
    """Until the seed guest's boot script finished and sshd runs (asked through its agent:
    the guest has no address yet).

    :raises GuestUnreachable: not within ``boot_timeout_s``.
    """
    deadline = time.monotonic() + boot_timeout_s
    while time.monotonic() < deadline:
        if hypervisor.guest_agent_ping(record.id, 5):
            try:
                if hypervisor.guest_agent_exec(record.id, SETTLE, [], AGENT_TIMEOUT_S) == 0:
                    return
            except HypervisorError:
                pass
        time.sleep(0.5)
    raise GuestUnreachable(f"seed guest {record.name} did not come up within "
                           f"{boot_timeout_s:.0f}s")
