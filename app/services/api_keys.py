"""ApiKeys: managed API keys (``/v1/admin/api-keys``) in the embedded store.

A key is ``rds_<prefix>_<secret>``: ``prefix`` is 8 random hex characters that lists show so
people can tell keys apart, ``secret`` 256 random bits. The whole key is shown once, in the
create answer; the store keeps only its SHA-256 (a key has far too much entropy for a slow
hash to matter), so a copy of the database lets nobody in. A presented key is looked up by
that hash. Revoked keys stay listed (who had access when) and cannot be used again; expired
ones neither. ``lastUsedAt`` is written at most once a minute per key, so a busy key does not
turn every request into a database write.

The bootstrap ``API_KEY`` from the environment is not one of these (app.api.auth checks it
first); it has every scope and cannot be revoked here.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
import typing as t
import uuid

from app import actor
from app.clock import iso_at
from app.errors import ApiKeyNameTaken, ApiKeyNotFound, InvalidRequest
from app.models import ApiKey, NewApiKey
from app.services.events import Events
from app.store.db import Store

log = logging.getLogger(__name__)
KEY_PREFIX = "rds_"
TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key
MAX_KEY_LENGTH = 128  # longer presented keys are not looked up at all


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_at(timestamp)


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], prefix=row["prefix"],
                  scopes=tuple(row["scopes"].split()), max_vms=row["max_vms"],
                  created_at=iso_at(row["created_at"]), created_by=row["created_by"],
                  expires_at=_iso(row["expires_at"]), last_used_at=_iso(row["last_used_at"]),
                  revoked_at=_iso(row["revoked_at"]))


def _check_id(key_id: str) -> None:
    """:raises ApiKeyNotFound: ``key_id`` is no key id (a UUID) at all."""
    try:
        uuid.UUID(key_id)
    except ValueError:
        raise ApiKeyNotFound(f"API key {key_id[:100]!r} not found") from None


class ApiKeys:
    """Create, list, revoke and check managed keys. Thread-safe; one per worker process.

    :param clock: wall-clock seconds; tests pass a fake.
    """

    def __init__(self, store: Store, events: Events | None = None,
                 clock: t.Callable[[], float] = time.time) -> None:
        self.store = store
        self.events = events
        self.clock = clock

    def create(self, name: str, scopes: t.Collection[str], max_vms: int | None = None,
               expires_at: dt.datetime | None = None) -> NewApiKey:
        """A new key; its secret is in the answer and nowhere else.

        :param scopes: ``vms`` and/or ``admin`` (validated by the schema).
        :param expires_at: when it stops working (aware datetime; None: never).
        :raises InvalidRequest: ``expires_at`` is not in the future.
        :raises ApiKeyNameTaken: a live key has this name already.
        """
        now = self.clock()
        expires = expires_at.timestamp() if expires_at is not None else None
        if expires is not None and expires <= now:
            raise InvalidRequest("expiresAt must be in the future")
        prefix = secrets.token_hex(4)
        secret = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        key_id = str(uuid.uuid4())
        ordered = " ".join(scope for scope in actor.SCOPES if scope in set(scopes))
        with self.store.transaction() as conn:
            taken = conn.execute("SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS "
                                 "NULL", (name,)).fetchone()
            if taken:
                raise ApiKeyNameTaken(f"an API key named {name!r} exists; revoke it first or "
                                      f"choose another name")
            conn.execute("INSERT INTO api_keys (id, name, prefix, key_hash, scopes, max_vms, "
                         "created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (key_id, name, prefix, _digest(secret), ordered, max_vms, now,
                          actor.current.get(), expires))
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        key = _key(row)
        log.info("api key created key=%s name=%s prefix=%s scopes=%s", key.id, name, prefix,
                 ordered)
        self._emit("apikey.created", key)
        return NewApiKey(key=key, secret=secret)

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        with self.store.transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        return [_key(row) for row in rows]

    def get(self, key_id: str) -> ApiKey:
        """:raises ApiKeyNotFound: unknown or malformed id."""
        _check_id(key_id)
        with self.store.transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise ApiKeyNotFound(f"API key {key_id} not found")
        return _key(row)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once (for every worker process); revoking it again changes nothing.

        :raises ApiKeyNotFound: unknown or malformed id.
        """
        _check_id(key_id)
        with self.store.transaction() as conn:
            changed = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND "
                                   "revoked_at IS NULL", (self.clock(), key_id)).rowcount
        key = self.get(key_id)
        if changed:
            log.info("api key revoked key=%s name=%s", key.id, key.name)
            self._emit("apikey.revoked", key)
        return key

    def check(self, presented: str) -> ApiKey | None:
        """The live key ``presented`` is, or None (unknown, revoked, expired, malformed); a
        use moves its ``lastUsedAt`` on (at most once a minute)."""
        if not presented.startswith(KEY_PREFIX) or len(presented) > MAX_KEY_LENGTH:
            return None
        digest = _digest(presented)
        now = self.clock()
        with self.store.transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE key_hash = ?",
                               (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        if row["revoked_at"] is not None or (row["expires_at"] is not None
                                             and row["expires_at"] <= now):
            return None
        if row["last_used_at"] is None or now - row["last_used_at"] >= TOUCH_EVERY_S:
            with self.store.transaction() as conn:
                conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                             (now, row["id"]))
        return _key(row)

    def _emit(self, type_: str, key: ApiKey) -> None:
        if self.events is not None:
            self.events.emit(type_, "apikey", key.id, {"name": key.name, "prefix": key.prefix,
                                                       "scopes": list(key.scopes)})
