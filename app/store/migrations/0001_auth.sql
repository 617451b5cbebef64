-- Admin login: failed attempts (rate limit with backoff) and server-side sessions.

-- One row per client address and per account (email) with recent failures.
CREATE TABLE login_failures (
    scope TEXT NOT NULL CHECK (scope IN ('address', 'account')),
    subject TEXT NOT NULL,          -- the client address, or a SHA-256 of the email
    failures INTEGER NOT NULL,      -- since the counter was last reset
    last_failed_at REAL NOT NULL,   -- unix time
    PRIMARY KEY (scope, subject)
);
CREATE INDEX login_failures_last_failed_at ON login_failures (last_failed_at);

-- The session cookie carries only a random id; its SHA-256 is the key here.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    fingerprint TEXT NOT NULL,      -- HMAC(SESSION_SECRET, ADMIN_PASSWORD) at login
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX sessions_last_seen ON sessions (last_seen);
