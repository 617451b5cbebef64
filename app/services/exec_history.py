"""The recent exec / run-ts / run-js calls of each VM, in the embedded store (SQLite).

Each finished call (buffered or streamed) is one row: what ran (the command, or the first
4 KiB of the code), how it ended, the first 4 KiB of its output and who asked. At most
``EXEC_LOG_PER_VM`` rows per VM are kept (older ones go at each insert), none older than
``EXEC_LOG_MAX_AGE_S`` (the maintaining process prunes), and a VM's rows go with it. Recording
never fails the call it records: a store error is logged and the call's answer stands.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid

from app.config import Settings
from app.errors import StoreUnavailable
from app.models import CommandResult
from app.store.db import Store

log = logging.getLogger(__name__)
PREVIEW_BYTES = 4096
KINDS = ("exec", "run-ts", "run-js")


@dataclasses.dataclass(frozen=True)
class ExecRecord:
    id: str
    vm_id: str
    type: str
    command: str
    exit_code: int
    timed_out: bool
    duration_ms: int
    started_at: str
    stdout_preview: str
    stderr_preview: str
    actor: str


def preview(data: bytes | str) -> str:
    """The first 4 KiB, as text (bytes that are not UTF-8 replaced)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return raw[:PREVIEW_BYTES].decode("utf-8", errors="replace")


class ExecHistory:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def record(self, vm_id: str, kind: str, command: str, result: CommandResult,
               started_at: str, actor: str) -> None:
        """Keep one finished call; never raises."""
        row = (uuid.uuid4().hex, vm_id, kind, preview(command), result.exit_code,
               int(result.timed_out), result.duration_ms, started_at, preview(result.stdout),
               preview(result.stderr), actor, time.time())
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    "INSERT INTO exec_history (id, vm_id, type, command, exit_code, timed_out, "
                    "duration_ms, started_at, stdout_preview, stderr_preview, actor, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                # Everything from the newest row past the cap down (a seek in the (vm_id, seq)
                # index; NULL, so nothing, while the VM has fewer rows).
                conn.execute(
                    "DELETE FROM exec_history WHERE vm_id = ? AND seq <= (SELECT seq FROM "
                    "exec_history WHERE vm_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (vm_id, vm_id, self.settings.exec_log_per_vm))
        except StoreUnavailable as exc:
            log.warning("exec history not recorded vm=%s: %s", vm_id, exc.message)

    def list(self, vm_id: str, limit: int, kind: str | None = None) -> list[ExecRecord]:
        """The VM's calls, newest first.

        :raises StoreUnavailable: the store cannot be read (503).
        """
        query = "SELECT * FROM exec_history WHERE vm_id = ?"
        params: list[object] = [vm_id]
        if kind is not None:
            query += " AND type = ?"
            params.append(kind)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query, params).fetchall()
        return [ExecRecord(id=row["id"], vm_id=row["vm_id"], type=row["type"],
                           command=row["command"], exit_code=row["exit_code"],
                           timed_out=bool(row["timed_out"]), duration_ms=row["duration_ms"],
                           started_at=row["started_at"], stdout_preview=row["stdout_preview"],
                           stderr_preview=row["stderr_preview"], actor=row["actor"])
                for row in rows]

    def forget(self, vm_id: str) -> None:
        """Drop a removed VM's rows (part of its teardown; a failure is left to the prune)."""
        try:
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM exec_history WHERE vm_id = ?", (vm_id,))
        except StoreUnavailable as exc:
            log.warning("exec history of vm=%s not removed: %s", vm_id, exc.message)

    def prune(self, live_vm_ids: set[str]) -> int:
        """Drop rows older than ``EXEC_LOG_MAX_AGE_S`` and rows of VMs that no longer exist;
        returns how many went."""
        cutoff = time.time() - self.settings.exec_log_max_age_s
        with self.store.transaction() as conn:
            gone = conn.execute("DELETE FROM exec_history WHERE recorded_at < ?",
                                (cutoff,)).rowcount
            known = [row[0] for row in conn.execute("SELECT DISTINCT vm_id FROM exec_history")]
            for vm_id in set(known) - live_vm_ids:
                gone += conn.execute("DELETE FROM exec_history WHERE vm_id = ?",
                                     (vm_id,)).rowcount
        return gone
