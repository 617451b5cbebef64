-- The recent exec / run-ts / run-js calls of each VM (GET /v1/vms/{id}/exec-logs): the last
-- EXEC_LOG_PER_VM per VM, none older than EXEC_LOG_MAX_AGE_S; removed with the VM.
CREATE TABLE exec_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: newest first is seq DESC
    id TEXT NOT NULL UNIQUE,
    vm_id TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('exec', 'run-ts', 'run-js')),
    command TEXT NOT NULL,                  -- the command, or the first 4 KiB of the code
    exit_code INTEGER NOT NULL,
    timed_out INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    started_at TEXT NOT NULL,               -- ISO-8601 UTC
    stdout_preview TEXT NOT NULL,           -- the first 4 KiB of each
    stderr_preview TEXT NOT NULL,
    actor TEXT NOT NULL,                    -- "api-key", "session:<email>"
    recorded_at REAL NOT NULL               -- unix time, for the age limit
);
CREATE INDEX exec_history_vm ON exec_history (vm_id, seq);
CREATE INDEX exec_history_recorded_at ON exec_history (recorded_at);
