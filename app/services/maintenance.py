"""Background upkeep with exactly one owner per host: memory snapshots and the warm pool.

Every gunicorn worker starts a :class:`Maintainer` thread; the one that holds the host-wide
``maintenance.lock`` (flock, released by the kernel when its process dies) does the work, the
others wait to take over. The owner, every few seconds:

- saves a memory snapshot (seed) for each ``SNAPSHOT_SHAPES`` entry that has none for the
  current build of the default image and of every READY custom image
  (``SNAPSHOT_AUTO_BUILD``), and removes outdated unused ones;
- keeps ``WARM_POOL_TARGET`` ready pool VMs per ``WARM_POOL_SHAPES`` entry
  (``ENABLE_WARM_POOL``), at most ``WARM_POOL_MAX_VMS`` in all, and removes pool VMs that
  died, belong to an old image build or were left half-made by a crashed owner;
- refreshes the host-wide egress sets (the host's own addresses change: DHCP, new links);
- in a thread of its own, every :data:`REAP_INTERVAL_S`, enforces lifetimes (expiry, idle
  stop) and finishes interrupted deletes (:class:`~app.services.reaper.Reaper`), so a long
  memory-snapshot save never delays an expiry;
- in another thread, every :data:`BUILD_INTERVAL_S`, builds queued custom images
  (:class:`~app.services.image_builder.ImageBuilder`, which holds its own host lock while it
  builds), so a build of many minutes delays neither;
- in a third thread, every :data:`DELIVER_INTERVAL_S`, sends due webhook deliveries
  (:class:`~app.services.webhook_delivery.DeliveryWorker`, which sends on a pool of its own,
  so a slow receiver delays neither the loops nor other webhooks);
- in a fourth thread, every :data:`SHIP_INTERVAL_S`, when ``HOSTS`` names remote hosts, ships
  every READY image to every UP host where it is not ready
  (:meth:`~app.services.image_shipping.ImageShipper.ship_missing`);
- every :data:`SWEEP_INTERVAL_S`, sweeps what crashed creates left behind (a worker killed
  mid-create leaves a domain that counts against ``MAX_VMS``), with the usual 10-minute age
  guard (:meth:`VmService.remove_orphans`).

Claiming a pool VM is not done here but in the request (:meth:`WarmPool.claim`), under the
allocation lock. ``drain()`` removes every pool VM (gunicorn's ``on_exit``).
"""
from __future__ import annotations

import fcntl
import logging
import threading
import time
import typing as t
from pathlib import Path

from app.config import Settings
from app.errors import AppError, QuotaExceeded
from app.models import ImageState, VmPhase, VmRecord
from app.services.pool import WarmPool
from app.services.seed_builder import SeedBuilder
from app.services.templates import TemplateCatalog
from app.virt.ipsets import IpSets

log = logging.getLogger(__name__)
INTERVAL_S = 3.0
REAP_INTERVAL_S = 2.0
BUILD_INTERVAL_S = 2.0
DELIVER_INTERVAL_S = 0.5
SWEEP_INTERVAL_S = 60.0
SHIP_INTERVAL_S = 30.0


class Maintainer:
    def __init__(self, settings: Settings, pool: WarmPool, seeds: SeedBuilder,
                 templates: TemplateCatalog, ipsets: IpSets,
                 sweep: t.Callable[[], list[str]],
                 reap: t.Callable[[], list[str]] | None = None,
                 build: t.Callable[[threading.Event], list[str]] | None = None,
                 deliver: t.Callable[[], int] | None = None,
                 ship: t.Callable[[], list[str]] | None = None) -> None:
        """:param sweep: removes what crashed creates and snapshots left behind.
        :param reap: enforces lifetimes (:meth:`app.services.reaper.Reaper.run_once`).
        :param build: builds queued images until none is left or the event is set
            (:meth:`app.services.image_builder.ImageBuilder.run_pending`).
        :param deliver: starts sending the due webhook deliveries
            (:meth:`app.services.webhook_delivery.DeliveryWorker.run_once`).
        :param ship: ships images to the remote hosts that lack them
            (:meth:`app.services.image_shipping.ImageShipper.ship_missing`)."""
        self.settings = settings
        self.pool = pool
        self.seeds = seeds
        self.templates = templates
        self.ipsets = ipsets
        self.sweep = sweep
        self.reap = reap
        self.build = build
        self.deliver = deliver
        self.ship = ship
        self._swept_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reaper_thread: threading.Thread | None = None
        self._builder_thread: threading.Thread | None = None
        self._deliver_thread: threading.Thread | None = None
        self._shipper_thread: threading.Thread | None = None
        self._lock_file: t.IO[str] | None = None

    # Ownership #############################################################################

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`; only the lock holder does any work."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rds-maintainer",
                                            daemon=True)
            self._thread.start()
        side_loops = (("_reaper_thread", "rds-reaper", REAP_INTERVAL_S, self.reap, "reaper"),
                      ("_builder_thread", "rds-image-builder", BUILD_INTERVAL_S,
                       self.build and (lambda: self.build(self._stop)), "image build"),
                      ("_deliver_thread", "rds-webhooks", DELIVER_INTERVAL_S, self.deliver,
                       "webhook delivery"),
                      ("_shipper_thread", "rds-image-shipper", SHIP_INTERVAL_S,
                       self.ship and self._ship_round, "image shipping"))
        for attribute, name, interval, work, what in side_loops:
            if getattr(self, attribute) is None and work is not None:
                thread = threading.Thread(target=self._owner_loop, name=name, daemon=True,
                                          args=(interval, work, what))
                setattr(self, attribute, thread)
                thread.start()

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop the loops; with ``wait_s``, wait that long for them to end and then give up
        ownership, so another instance in this process can take over (tests)."""
        self._stop.set()
        threads = [thread for thread in (self._thread, self._reaper_thread,
                                         self._builder_thread, self._deliver_thread,
                                         self._shipper_thread) if thread]
        if not wait_s:
            return
        deadline = time.monotonic() + wait_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._lock_file is not None and not any(thread.is_alive() for thread in threads):
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def try_become_owner(self) -> bool:
        if self._lock_file is not None:
            return True
        path = Path(self.settings.storage_root) / "maintenance.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - kept open: the flock lives as long as it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock_file = handle
        log.info("this process now maintains memory snapshots and the warm pool")
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.try_become_owner():
                    self.run_once()
            except Exception:  # the loop must survive anything and retry
                log.exception("maintenance round failed")
            self._stop.wait(INTERVAL_S)

    def _owner_loop(self, interval: float, work: t.Callable[[], object], what: str) -> None:
        """``work()`` every ``interval`` seconds while this process is the owner."""
        while not self._stop.wait(interval):
            if self._lock_file is None:
                continue  # not the owner (yet): the main loop takes ownership
            try:
                work()
            except Exception:  # the loop must survive anything and retry
                log.exception("%s round failed", what)

    # Work ##################################################################################

    def _ship_round(self) -> None:
        assert self.ship is not None
        for item in self.ship():
            log.info("image shipping: %s", item)

    def run_once(self) -> None:
        self.ipsets.refresh_host_sets()
        if self._swept_at is None or time.monotonic() - self._swept_at >= SWEEP_INTERVAL_S:
            self._swept_at = time.monotonic()
            for item in self.sweep():
                log.info("removed orphan %s", item)
        if self.settings.snapshot_auto_build_enabled:
            self.ensure_seeds()
        if self.settings.warm_pool_enabled:
            self.refill_pool()

    def ensure_seeds(self) -> None:
        for image_id in self._seeded_images():
            for cpu, mem_mb in self.settings.snapshot_shape_list:
                if self._stop.is_set():
                    return
                try:
                    self.seeds.ensure(cpu, mem_mb, image_id)
                except AppError as exc:
                    log.warning("memory snapshot %sx%s of image %s not saved: %s", cpu,
                                mem_mb, image_id, exc.message)
        self.seeds.prune()

    def _seeded_images(self) -> list[str]:
        """The default image, then every READY custom image."""
        images = [self.templates.default_id]
        custom = self.templates.custom
        for record in custom.all() if custom else []:
            if record.state is ImageState.READY and record.id not in images:
                images.append(record.id)
        return images

    def refill_pool(self) -> int:
        """Remove broken pool VMs, then start missing ones; returns how many were started."""
        ready: dict[tuple[int, int], int] = {}
        total = 0
        current_builds = self._current_builds()
        for record, state in self.pool.vms():
            problem = self._problem(record, state, current_builds)
            if problem:
                log.info("removing pool vm=%s name=%s: %s", record.id, record.name, problem)
                self.pool.remove(record)
                continue
            total += 1
            shape = (record.cpu, record.mem_mb)
            ready[shape] = ready.get(shape, 0) + 1
        started = 0
        for shape in self.settings.warm_pool_shape_list:
            while ready.get(shape, 0) < self.settings.warm_pool_target and \
                    total < self.settings.warm_pool_max_vms and not self._stop.is_set():
                try:
                    vm = self.pool.start_one(*shape)
                except QuotaExceeded:
                    return started  # the callers' VMs come first
                except AppError as exc:
                    log.warning("pool vm %sx%s not started: %s", *shape, exc.message)
                    break
                log.info("pool vm ready vm=%s name=%s mode=%s", vm.id, vm.name,
                         vm.provision_mode.value)
                ready[shape] = ready.get(shape, 0) + 1
                total += 1
                started += 1
        return started

    def drain(self) -> int:
        """Remove every pool VM (service shutdown)."""
        records = self.pool.vms()
        for record, _state in records:
            self.pool.remove(record)
        if records:
            log.info("warm pool drained: %s VM(s) removed", len(records))
        return len(records)

    def _current_builds(self) -> set[str]:
        return {str(build.path) for _template, build in self.templates.current_builds()}

    def _problem(self, record: VmRecord, state: str, current_builds: set[str]) -> str:
        if state != "running":
            return f"it is {state}"
        if record.image_path not in current_builds:
            return "its image build is outdated"
        if record.phase is not VmPhase.READY:
            # The owner makes pool VMs one at a time in this thread: one that is not ready
            # here was left half-made by an owner that died.
            return "a crashed owner left it half-made"
        if record.image_id != self.templates.default_id:
            return "its image is no longer the default"
        if (record.cpu, record.mem_mb) not in self.settings.warm_pool_shape_list:
            return "its shape is no longer pooled"
        return ""

