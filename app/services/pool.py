"""WarmPool: pre-started sealed VMs, handed out on create (``ENABLE_WARM_POOL``).

A pool VM is a VM of role ``pool``: invisible to the API, with no egress at all (its sets stay
empty). A claim hands a ready one of the caller's shape and image build to the caller: under
the host-wide allocation lock its record changes role and takes the caller's policy, so it is
handed out exactly once across worker processes. Removals read the role again under the same
lock, so a VM that was just handed out is never evicted or removed. The maintaining process
keeps the pool filled (:mod:`app.services.maintenance`).
"""
from __future__ import annotations

import dataclasses
import logging
import typing as t

from app.clock import now_iso
from app import metrics
from app.config import Settings
from app.errors import AppError
from app.models import ProvisionMode, Vm, VmPhase, VmRecord, VmRole, VmSpec
from app.services.addresses import allocation_lock
from app.services.ownership import check_quota
from app.services.policy import EgressPolicy
from app.services.provisioner import LOCK_TIMEOUT, CreatePlan, Provisioner
from app.services.records import VmRecords, to_vm
from app.services.teardown import VmTeardown
from app.services.undo import quietly
from app.virt.domain_xml import vm_title

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)


class WarmPool:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, records: VmRecords,
                 provisioner: Provisioner, policy: EgressPolicy,
                 teardown: VmTeardown) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.records = records
        self.provisioner = provisioner
        self.policy = policy
        self.teardown = teardown

    def vms(self) -> list[tuple[VmRecord, str]]:
        """Every pool VM with its libvirt run state."""
        return self.records.pool()

    def start_one(self, cpu: int, mem_mb: int, image_id: str | None = None) -> Vm:
        """Start one sealed pool VM of the template's default disk size."""
        plan = self.provisioner.plan(VmSpec(cpu=cpu, mem_mb=mem_mb, image_id=image_id))
        return self.provisioner.create(plan, role=VmRole.POOL)

    def claim(self, plan: CreatePlan) -> Vm | None:
        """Hand out a ready pool VM of this shape with the caller's policy, or None."""
        if not self.settings.warm_pool_enabled:
            return None
        spec = plan.spec
        with allocation_lock(self.settings.lock_path, LOCK_TIMEOUT):
            if spec.owner_max_vms is not None:  # the key's quota, as a cold create checks it
                check_quota(spec, [record for record, _info in self.records.all()])
            candidates = sorted(
                (record for record, state in self.vms()
                 if state == "running" and record.phase is VmPhase.READY
                 and (record.cpu, record.mem_mb) == (spec.cpu, spec.mem_mb)
                 and record.image_id == plan.template.id
                 and record.image_path == str(plan.build.path)
                 and record.disk_size_mb == plan.disk_size_mb),
                key=lambda record: record.created_at)
            if not candidates:
                metrics.WARM_POOL_CLAIMS.labels("miss").inc()
                log.info("warm pool miss shape=%sx%s template=%s", spec.cpu, spec.mem_mb,
                         plan.template.id)
                return None
            record = dataclasses.replace(
                candidates[0], role=VmRole.SANDBOX, provision_mode=ProvisionMode.POOL,
                allow_ips=spec.allow_ips, outbound_internet=spec.outbound_internet,
                created_at=now_iso(), **plan.caller_fields())
            try:
                self.policy.apply(record)
                self.records.save(record)
            except AppError as exc:
                log.warning("warm pool claim failed vm=%s error=%s: removing it", record.id,
                            exc.message)
                quietly(self.teardown.remove, record)
                return None
        quietly(self.hypervisor.set_title, record.id, vm_title(record))
        metrics.WARM_POOL_CLAIMS.labels("hit").inc()
        log.info("warm pool hit vm=%s name=%s", record.id, record.name)
        return to_vm(record, "running")

    def remove(self, record: VmRecord) -> bool:
        """Remove a pool VM unless a create claimed it since ``record`` was read.

        :returns: whether it was removed.
        """
        with allocation_lock(self.settings.lock_path, LOCK_TIMEOUT):
            current = self.records.any(record.id)
            if current is None or current.role is not VmRole.POOL:
                if current is not None:
                    log.info("pool vm=%s was claimed meanwhile: kept", record.id)
                return False
            self.teardown.remove(current)
        return True

    def evict(self) -> bool:
        """Make room for a caller's VM at the quota: remove the newest idle pool VM (one that
        no concurrent create claimed meanwhile)."""
        for record, _state in sorted(self.vms(), key=lambda item: item[0].created_at,
                                     reverse=True):
            if self.remove(record):
                log.info("quota reached: evicted pool vm=%s name=%s", record.id, record.name)
                return True
        return False
