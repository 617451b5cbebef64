"""Reaper: enforces lifetimes, host-wide, in the maintaining process only.

Every few seconds it deletes the callers' VMs whose ``expiresAt`` has passed, stops running
VMs unused for their ``idleStopSeconds``, and finishes deletes that a process began but did not
end (it died after powering the VM off). Each action re-checks its condition under the VM's
lock, so a keepalive or a delete that lands meanwhile wins, and a VM is deleted exactly once.
"""
from __future__ import annotations

import logging

from app import actor, metrics
from app.errors import AppError, VmBusy, VmNotFound
from app.models import VmPhase, VmRecord, VmRole, VmState
from app.services.lifecycle import Lifecycle
from app.services.events import Events
from app.services.lifetimes import Activity, is_expired
from app.services.records import VmRecords, vm_state

log = logging.getLogger(__name__)
FINISH_LOCK_WAIT_S = 0.2  # a delete being finished by its own process is left to it


class Reaper:
    def __init__(self, records: VmRecords, lifecycle: Lifecycle, activity: Activity,
                 events: Events | None = None) -> None:
        self.records = records
        self.lifecycle = lifecycle
        self.activity = activity
        self.events = events

    def run_once(self) -> list[str]:
        """One pass over the callers' VMs; returns what was done."""
        done = []
        for record, info in self.records.all():
            if record.role is not VmRole.SANDBOX:
                continue
            try:
                action = self._act(record, info.state)
            except VmNotFound:
                continue  # deleted meanwhile
            except AppError as exc:
                log.warning("reaper: vm=%s: %s", record.id, exc.message)
                continue
            if action:
                log.info("reaper: %s vm=%s name=%s", action, record.id, record.name)
                done.append(f"{action} {record.id}")
        return done

    def _act(self, record: VmRecord, domain_state: str) -> str:
        state = vm_state(domain_state, record.phase)
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
                self._emit("vm.expired", record, {"expiresAt": record.expires_at})
            return "expired" if deleted else ""
        if record.idle_stop_s and state is VmState.RUNNING and self._idle(record):
            stopped = self.lifecycle.stop(record.id, only_if=self._idle)
            if stopped:
                metrics.VMS_IDLE_STOPPED.inc()
                self._emit("vm.stopped", record, {"reason": "idle",
                                                  "idleStopSeconds": record.idle_stop_s})
            return "stopped idle" if stopped else ""
        # Ready, and off without a stop through the API: the guest powered itself off,
        # crashed, or someone destroyed it. Said once: the phase moves on.
        if record.phase is VmPhase.READY and domain_state in ("shutoff", "crashed") and \
                self.lifecycle.note_stopped_on_its_own(record.id):
            self._emit("vm.failed", record, {"reason": f"the guest stopped without the API "
                                                       f"(libvirt: {domain_state})"})
            return "noticed the stop of"
        return ""

    def _emit(self, type_: str, record: VmRecord, payload: dict) -> None:
        if self.events is not None:
            self.events.emit(type_, "vm", record.id, {"name": record.name, **payload},
                             by=actor.SYSTEM)

    def _idle(self, record: VmRecord) -> bool:
        return bool(record.idle_stop_s) and \
            self.activity.idle_s(record) >= record.idle_stop_s
