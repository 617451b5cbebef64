"""AuthService: the admin login (with rate limits) and server-side sessions.

Both live in the embedded store (app.store), so they hold across gunicorn's worker processes
and restarts.

Rate limit: failures are counted per client address and per account (the email as typed,
hashed: people type passwords into the email field). Once either count reaches
``LOGIN_MAX_FAILURES``, each further attempt waits a lockout that doubles with every failure
(1 s, 2 s, 4 s ... up to ``LOGIN_MAX_LOCKOUT_S``); a locked attempt is refused before the
password is looked at. A count is forgotten ``LOGIN_FAILURE_WINDOW_S`` after its lockout
ends without another failure; a successful login resets the account's count.

Sessions: the cookie carries only a random id; the store keeps its SHA-256 with the email,
times, a revocation mark and a fingerprint (HMAC of ADMIN_PASSWORD under SESSION_SECRET).
Logout revokes the row; a restart with another ADMIN_PASSWORD or SESSION_SECRET changes the
fingerprint and so ends every older session; sessions expire when idle and at a maximum age.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import secrets
import sqlite3
import time
import typing as t

from app.config import Settings
from app.errors import RateLimited, Unauthorized
from app.store.db import Store

log = logging.getLogger(__name__)
TOUCH_EVERY_S = 60.0  # last_seen is written at most this often per session
MAX_TOKEN_LENGTH = 128


@dataclasses.dataclass(frozen=True)
class LoginSession:
    """A new session: ``token`` goes into the (signed) cookie, nowhere else."""

    token: str
    email: str


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


class AuthService:
    """Logins and sessions of the one admin account. Thread-safe; one per worker process.

    :param clock: wall-clock seconds (shared across processes through the store); tests
        pass a fake.
    """

    def __init__(self, settings: Settings, store: Store,
                 clock: t.Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._fingerprint = hmac.new(settings.secret_key.encode(),
                                     settings.admin_password.encode(),
                                     hashlib.sha256).hexdigest()

    # Login #################################################################################

    def login(self, email: str, password: str, address: str) -> LoginSession:
        """Check the admin's credentials and open a session.

        :param address: the client's address (rate limited separately from the account).
        :raises RateLimited: the address or the account is locked out (Retry-After).
        :raises Unauthorized: wrong email or password.
        """
        now = self.clock()
        keys = [("address", address or "unknown"), ("account", _digest(email.strip().lower()))]
        with self.store.transaction() as conn:
            wait = max(self._lockout_left(conn, scope, subject, now) for scope, subject in keys)
            if wait > 0:
                log.warning("admin login refused while locked out address=%s retry_after=%s",
                            address, wait)
                raise RateLimited(f"Too many failed logins; try again in {wait} s",
                                  retry_after_s=wait)
            # Compare both fields every time: no timing hint which one was wrong.
            ok_email = _equal(email, self.settings.admin_email)
            ok_password = _equal(password, self.settings.admin_password)
            if ok_email and ok_password:
                conn.execute("DELETE FROM login_failures WHERE scope = ? AND subject = ?",
                             keys[1])
                token = self._open_session(conn, now)
            else:
                for scope, subject in keys:
                    self._count_failure(conn, scope, subject, now)
        if not (ok_email and ok_password):
            log.warning("admin login failed address=%s", address)
            raise Unauthorized("Invalid email or password")
        log.info("admin logged in address=%s", address)
        return LoginSession(token=token, email=self.settings.admin_email)

    def _lockout_s(self, failures: int) -> float:
        """How long an address or account waits after its ``failures``-th failure."""
        over = failures - self.settings.login_max_failures
        if over < 0:
            return 0.0
        return float(min(2 ** min(over, 40), self.settings.login_max_lockout_s))

    def _lockout_left(self, conn: sqlite3.Connection, scope: str, subject: str,
                      now: float) -> int:
        """Whole seconds until ``subject`` may try again (0: now)."""
        row = conn.execute("SELECT failures, last_failed_at FROM login_failures "
                           "WHERE scope = ? AND subject = ?", (scope, subject)).fetchone()
        if row is None:
            return 0
        left = row["last_failed_at"] + self._lockout_s(row["failures"]) - now
        return math.ceil(left) if left > 0 else 0

    def _count_failure(self, conn: sqlite3.Connection, scope: str, subject: str,
                       now: float) -> None:
        row = conn.execute("SELECT failures, last_failed_at FROM login_failures "
                           "WHERE scope = ? AND subject = ?", (scope, subject)).fetchone()
        failures = 1
        if row is not None and not self._forgotten(row["failures"], row["last_failed_at"], now):
            failures = row["failures"] + 1
        conn.execute("INSERT INTO login_failures (scope, subject, failures, last_failed_at) "
                     "VALUES (?, ?, ?, ?) ON CONFLICT (scope, subject) DO UPDATE SET "
                     "failures = excluded.failures, last_failed_at = excluded.last_failed_at",
                     (scope, subject, failures, now))
        # Rows nobody could still be locked by, or counted against, go.
        cutoff = now - self.settings.login_failure_window_s - self.settings.login_max_lockout_s
        conn.execute("DELETE FROM login_failures WHERE last_failed_at < ?", (cutoff,))

    def _forgotten(self, failures: int, last_failed_at: float, now: float) -> bool:
        quiet_since = last_failed_at + self._lockout_s(failures)
        return now - quiet_since > self.settings.login_failure_window_s

    # Sessions ##############################################################################

    def _open_session(self, conn: sqlite3.Connection, now: float) -> str:
        token = secrets.token_urlsafe(32)
        conn.execute("INSERT INTO sessions (id_hash, email, fingerprint, created_at, "
                     "last_seen) VALUES (?, ?, ?, ?, ?)",
                     (_digest(token), self.settings.admin_email, self._fingerprint, now, now))
        conn.execute("DELETE FROM sessions WHERE created_at < ? OR last_seen < ?",
                     (now - self.settings.session_max_age_s,
                      now - self.settings.session_idle_timeout_s))
        return token

    def session_email(self, token: str) -> str | None:
        """The admin's email when ``token`` names a live session, else None (and its use
        counts: ``last_seen`` moves on).

        Dead: unknown, revoked (logout), created under another ADMIN_PASSWORD or
        SESSION_SECRET, idle longer than SESSION_IDLE_TIMEOUT_S or older than
        SESSION_MAX_AGE_S.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        now = self.clock()
        id_hash = _digest(token)
        with self.store.transaction(write=False) as conn:
            row = conn.execute("SELECT email, fingerprint, created_at, last_seen, revoked_at "
                               "FROM sessions WHERE id_hash = ?", (id_hash,)).fetchone()
        if row is None or row["revoked_at"] is not None:
            return None
        if not hmac.compare_digest(row["fingerprint"], self._fingerprint):
            return None
        if row["email"] != self.settings.admin_email:
            return None
        if (now - row["last_seen"] > self.settings.session_idle_timeout_s
                or now - row["created_at"] > self.settings.session_max_age_s):
            return None
        if now - row["last_seen"] >= TOUCH_EVERY_S:
            with self.store.transaction() as conn:
                conn.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?",
                             (now, id_hash))
        return row["email"]

    def logout(self, token: str) -> None:
        """Revoke the session ``token`` names (nothing happens for an unknown one)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return
        with self.store.transaction() as conn:
            conn.execute("UPDATE sessions SET revoked_at = ? WHERE id_hash = ? "
                         "AND revoked_at IS NULL", (self.clock(), _digest(token)))
