-- What happened (GET /v1/admin/activity, the SSE stream GET /v1/admin/events, webhooks): one
-- row per event, in order; seq is the SSE event id a client resumes from (Last-Event-ID).
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,                 -- vm.created, vm.deleted, ... (app.services.events)
    time TEXT NOT NULL,                 -- ISO-8601 UTC
    entity_type TEXT NOT NULL,          -- vm, snapshot, image, apikey
    entity_id TEXT NOT NULL,
    actor TEXT NOT NULL,                -- "api-key", "session:<email>", "system", ...
    payload TEXT NOT NULL,              -- a JSON object
    recorded_at REAL NOT NULL           -- unix time, for the age limit
);
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_recorded_at ON events (recorded_at);
