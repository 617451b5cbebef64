-- Managed API keys (/v1/admin/api-keys). The secret is shown once, at creation; only the
-- SHA-256 of the whole key ("rds_<prefix>_<secret>") is kept. Revoked keys stay listed.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,        -- the 8 characters after "rds_": what lists show
    key_hash TEXT NOT NULL UNIQUE,      -- hex SHA-256 of the whole key
    scopes TEXT NOT NULL,               -- space-separated: "vms", "admin"
    max_vms INTEGER,                    -- the key's own VM quota; NULL: only the host's
    created_at REAL NOT NULL,           -- unix times; the API shows ISO-8601 UTC
    created_by TEXT NOT NULL,           -- the actor that created it
    expires_at REAL,
    last_used_at REAL,                  -- moved on at most once a minute
    revoked_at REAL
);
CREATE INDEX api_keys_created_at ON api_keys (created_at);
