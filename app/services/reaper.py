"""Reaper: enforces lifetimes, host-wide, in the maintaining process only.

Every few seconds it deletes the callers' VMs whose ``expiresAt`` has passed, stops running
VMs unused for their ``idleStopSeconds``, and finishes deletes that a process began but did not
end (it died after powering the VM off). Each action re-checks its condition under the VM's
lock, so a keepalive or a delete that lands meanwhile wins, and a VM is deleted exactly once.
"""
from __future__ import annotations

import logging

from app import metrics
from app.errors import AppError, VmBusy, VmNotFound
from app.models import VmPhase, VmRecord, VmRole, VmState
from app.services.lifecycle import Lifecycle
from app.services.lifetimes import Activity, is_expired
from app.services.records import VmRecords, vm_state

log = logging.getLogger(__name__)
FINISH_LOCK_WAIT_S = 0.2  # a delete being finished by its own process is left to it


class Reaper:
    def __init__(self, records: VmRecords, lifecycle: Lifecycle, activity: Activity) -> None:
        self.records = records
        self.lifecycle = lifecycle
        self.activity = activity

    def run_once(self) -> list[str]:
        """One pass over the callers' VMs; returns what was done."""
        done = []
        for record, info in self.records.all():
            if record.role is not VmRole.SANDBOX:
                continue
            try:
                action = self._act(record, vm_state(info.state, record.phase))
            except VmNotFound:
                continue  # deleted meanwhile
            except AppError as exc:
                log.warning("reaper: vm=%s: %s", record.id, exc.message)
                continue
            if action:
                log.info("reaper: %s vm=%s name=%s", action, record.id, record.name)
                done.append(f"{action} {record.id}")
        return done

    def _act(self, record: VmRecord, state: VmState) -> str:
        if record.phase is VmPhase.DELETING:
            try:
                finished = self.lifecycle.finish_delete(record.id, FINISH_LOCK_WAIT_S)
            except VmBusy:
                return ""  # its own process is finishing it
            return "finished the delete of" if finished else ""
        if is_expired(record):
            deleted = self.lifecycle.delete(record.id, only_if=is_expired, wait=True)
            if deleted:
                metrics.VMS_DELETED.labels("expired").inc()
            return "expired" if deleted else ""
        if record.idle_stop_s and state is VmState.RUNNING and self._idle(record):
            stopped = self.lifecycle.stop(record.id, only_if=self._idle)
            if stopped:
                metrics.VMS_IDLE_STOPPED.inc()
            return "stopped idle" if stopped else ""
        return ""

    def _idle(self, record: VmRecord) -> bool:
        return bool(record.idle_stop_s) and \
            self.activity.idle_s(record) >= record.idle_stop_s
