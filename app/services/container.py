"""The composition root's parts: build every service once per process from the settings, over
the adapters that reach the host (libvirt, ipset, ip, SSH) — real ones in the service, fakes
in unit tests."""
from __future__ import annotations

import dataclasses
import logging
import time
import typing as t
from pathlib import Path

from app.config import Settings
from app.guestssh import GuestSSH
from app.services.api_keys import ApiKeys
from app.services.auth import AuthService
from app.services.commands import CommandService
from app.services.console import ConsoleLogs
from app.services.events import Events
from app.services.exec_history import ExecHistory
from app.services.files import FileService
from app.services.health import HealthService
from app.services.host_metrics import HostCollector
from app.services.host_registry import HostRegistry, open_remote
from app.services.image_builder import ImageBuilder
from app.services.image_store import ImageStore
from app.services.hosts import HostsView
from app.services.image_shipping import ImageShipper
from app.services.images import ImageService
from app.services.maintenance import Maintainer
from app.services.seed_builder import SeedBuilder
from app.services.snapshot_store import SnapshotStore
from app.services.snapshots import SnapshotService
from app.services.templates import TemplateCatalog
from app.services.vm_stats import VmStatsReader
from app.services.vms import VmService, build_vm_parts
from app.services.webhook_delivery import DeliveryWorker
from app.services.webhooks import Webhooks
from app.store.db import Store
from app.virt.hostnet import BRIDGE_NF_IPTABLES
from app.virt.ipsets import IpSets
from app.virt.qemu_access import open_storage_root
from app.virt.taps import Taps

if t.TYPE_CHECKING:
    from app.config.hosts import RemoteHost
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Adapters:
    """What the services reach the host through."""

    hypervisor: Hypervisor
    ipsets: IpSets
    taps: Taps
    domain_type: str  # "kvm" or "qemu" (TCG)
    connect: t.Callable[..., GuestSSH] = GuestSSH  # makes a guest's SSH client
    bridge_nf: Path = BRIDGE_NF_IPTABLES
    clock: t.Callable[[], float] = time.time
    run_later: t.Callable[..., t.Any] | None = None  # background work (None: thread pools)
    open_host: t.Callable[[RemoteHost], Hypervisor] | None = None  # a HOSTS entry's libvirt


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
    console: ConsoleLogs
    stats: VmStatsReader
    host_metrics: HostCollector
    history: ExecHistory
    images: ImageService
    image_builder: ImageBuilder
    events: Events
    webhooks: Webhooks
    deliveries: DeliveryWorker
    api_keys: ApiKeys
    hosts: HostsView
    registry: HostRegistry
    shipper: ImageShipper

    def close(self) -> None:
        self.maintainer.stop()
        self.deliveries.close()
        self.vms.close()
        self.registry.close()

    def remove_orphans(self, min_age_s: float | None = None) -> list[str]:
        """What crashed creates and snapshots left behind (see the services' own sweeps)."""
        age = {} if min_age_s is None else {"min_age_s": min_age_s}
        return self.vms.remove_orphans(**age) + self.snapshots.remove_orphans(**age)


def host_adapters(settings: Settings) -> Adapters:
    """The real adapters: libvirt (the only place it is imported from), ipset, ip, SSH."""
    from app.virt.accel import choose_domain_type
    from app.virt.connection import Hypervisor

    domain_type = choose_domain_type(settings.accelerator)
    log.info("accelerator=%s (domain type %s, setting ACCELERATOR=%s)",
             "kvm" if domain_type == "kvm" else "tcg", domain_type, settings.accelerator)
    return Adapters(hypervisor=Hypervisor(settings.libvirt_uri, settings.libvirt_timeout_s),
                    ipsets=IpSets(settings.egress_never_list), taps=Taps(),
                    domain_type=domain_type, open_host=open_remote(settings))


def build_services(settings: Settings, adapters: Adapters | None = None) -> Services:
    """Every service, once per process. :param adapters: the host's when None."""
    adapters = adapters or host_adapters(settings)
    hypervisor = adapters.hypervisor
    open_storage_root(Path(settings.storage_root))
    custom = ImageStore(settings.custom_images_dir, settings.image_volumes_dir,
                        settings.images_dir / "default-image", settings.default_image_id)
    templates = TemplateCatalog(settings.templates_dir, settings.images_dir,
                                settings.default_image_id, custom)
    store = SnapshotStore(settings.snapshots_dir, templates)
    state = Store(settings.state_db_path)
    state.open()
    history = ExecHistory(settings, state)
    events = Events(settings, state)
    webhooks = Webhooks(settings, state, clock=adapters.clock)
    events.subscribe(webhooks.enqueue)
    deliveries = DeliveryWorker(settings, state, clock=adapters.clock)
    registry = HostRegistry(settings, adapters.open_host or _no_remote_hosts)
    parts = build_vm_parts(settings, hypervisor, templates, adapters.domain_type,
                           adapters.ipsets, adapters.taps, snapshots=store,
                           connect=adapters.connect, run_later=adapters.run_later,
                           forget=history.forget, events=events, registry=registry)
    vms = VmService(parts)
    seeds = SeedBuilder(settings, hypervisor, templates, parts.seeds, parts.records,
                        parts.files, parts.ports, parts.teardown)
    snapshots = SnapshotService(settings, hypervisor, templates, vms, store, events)
    builder = ImageBuilder(settings, custom, templates, parts, seeds, events)
    images = ImageService(settings, custom, templates, parts, store, parts.seeds)
    shipper = ImageShipper(settings, registry, templates, images.local_list,
                           parts.remote.seeds if parts.remote else None)
    if registry.hosts:
        images.readiness = shipper.readiness
    hosts = HostsView(settings, hypervisor, parts.records, images.local_list, registry,
                      shipper.build_of, shipper.snapshot_ready)

    def sweep() -> list[str]:
        removed = vms.remove_orphans() + snapshots.remove_orphans()
        pruned = history.prune({info.uuid for info in hypervisor.list_domains()})
        pruned += events.prune() + webhooks.prune()
        return removed + ([f"exec history, events and deliveries: {pruned} old or orphaned "
                           "rows"] if pruned else [])

    return Services(settings=settings, hypervisor=hypervisor, templates=templates, vms=vms,
                    commands=CommandService(settings, vms, hypervisor, history),
                    files=FileService(settings, vms), snapshots=snapshots, seeds=seeds,
                    domain_type=adapters.domain_type,
                    maintainer=Maintainer(settings, parts.pool, seeds, templates, parts.ipsets,
                                          sweep=sweep, reap=vms.reap,
                                          build=builder.run_pending,
                                          deliver=deliveries.run_once,
                                          ship=shipper.ship_missing if registry.hosts
                                          else None),
                    health=HealthService(settings, hypervisor, adapters.domain_type,
                                         adapters.bridge_nf, templates),
                    auth=AuthService(settings, state, clock=adapters.clock),
                    console=ConsoleLogs(settings, parts.records, parts.remote),
                    stats=VmStatsReader(hypervisor, parts.records, parts.remote),
                    host_metrics=HostCollector(parts.records, hosts), history=history,
                    images=images,
                    image_builder=builder, events=events, webhooks=webhooks,
                    deliveries=deliveries,
                    api_keys=ApiKeys(state, events, clock=adapters.clock),
                    hosts=hosts, registry=registry, shipper=shipper)


def _no_remote_hosts(host: RemoteHost) -> Hypervisor:
    raise AssertionError(f"HOSTS names {host.name} but these adapters reach no remote host")
