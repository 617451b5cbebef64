-- Webhooks (/v1/admin/webhooks) and their delivery queue. A delivery is enqueued inside the
-- transaction that records its event (app.services.events listeners), so none is lost; the
-- maintenance owner's worker sends them (app.services.webhook_delivery).
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,          -- a JSON array of event types; [] = every type
    enabled INTEGER NOT NULL,
    -- Kept as is: signing needs it (HMAC). Shown once, at create. The file is mode 0600.
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,          -- queue order (event order; a redelivery goes last)
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,                 -- the exact bytes sent and signed (the event as JSON)
    state TEXT NOT NULL,                -- pending, delivering, delivered, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,           -- unix times from here on
    next_attempt_at REAL NOT NULL,
    first_attempt_at REAL,              -- the retry window (WEBHOOK_RETRY_FOR_S) starts here
    last_attempt_at REAL,
    last_status_code INTEGER,
    last_error TEXT,
    claimed_by TEXT,                    -- the worker sending it (state delivering)
    claim_expires_at REAL,              -- then a dead worker's claim is retried
    finished_at REAL                    -- delivered or failed
);
CREATE UNIQUE INDEX webhook_deliveries_position ON webhook_deliveries (position);
CREATE INDEX webhook_deliveries_open ON webhook_deliveries (webhook_id, position)
    WHERE state IN ('pending', 'delivering');
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (webhook_id, position);
