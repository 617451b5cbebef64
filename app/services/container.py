"""The composition root's parts: build every service once per process from the settings."""
from __future__ import annotations

import dataclasses
import logging

from app.config import Settings
from app.services.auth import AuthService
from app.services.commands import CommandService
from app.services.files import FileService
from app.services.health import HealthService
from app.services.maintenance import Maintainer
from app.services.seed_builder import SeedBuilder
from app.services.snapshots import SnapshotService, SnapshotStore
from app.services.templates import TemplateCatalog
from app.services.vms import VmService
from app.store.db import Store
from app.virt.accel import choose_domain_type
from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    settings: Settings
    hypervisor: Hypervisor
    templates: TemplateCatalog
    vms: VmService
    commands: CommandService
    files: FileService
    snapshots: SnapshotService
    seeds: SeedBuilder
    domain_type: str
    maintainer: Maintainer
    health: HealthService
    auth: AuthService

    def close(self) -> None:
        self.maintainer.stop()
        self.vms.close()

    def remove_orphans(self, min_age_s: float | None = None) -> list[str]:
        """What crashed creates and snapshots left behind (see the services' own sweeps)."""
        age = {} if min_age_s is None else {"min_age_s": min_age_s}
        return self.vms.remove_orphans(**age) + self.snapshots.remove_orphans(**age)


def build_services(settings: Settings) -> Services:
    domain_type = choose_domain_type(settings.accelerator)
    log.info("accelerator=%s (domain type %s, setting ACCELERATOR=%s)",
             "kvm" if domain_type == "kvm" else "tcg", domain_type, settings.accelerator)
    hypervisor = Hypervisor(settings.libvirt_uri, settings.libvirt_timeout_s)
    templates = TemplateCatalog(settings.templates_dir, settings.images_dir,
                                settings.default_image_id)
    store = SnapshotStore(settings.snapshots_dir, templates)
    vms = VmService(settings, hypervisor, templates, domain_type, snapshots=store)
    seeds = SeedBuilder(settings, hypervisor, templates, vms.seeds, vms)
    snapshots = SnapshotService(settings, hypervisor, templates, vms, store)
    state = Store(settings.state_db_path)
    state.open()

    def sweep() -> list[str]:
        return vms.remove_orphans() + snapshots.remove_orphans()

    return Services(settings=settings, hypervisor=hypervisor, templates=templates, vms=vms,
                    commands=CommandService(settings, vms), files=FileService(settings, vms),
                    snapshots=snapshots, seeds=seeds, domain_type=domain_type,
                    maintainer=Maintainer(settings, vms, seeds, sweep=sweep),
                    health=HealthService(settings, hypervisor, domain_type),
                    auth=AuthService(settings, state))
