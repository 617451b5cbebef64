"""Events: what happened to VMs, snapshots, images and API keys, recorded once in the store.

Each event has an id, a type (:data:`EVENT_TYPES`), a time, the entity it is about, the actor
(who asked: an API key's name, an admin session, or ``system`` for the service's own work, e.g.
an expiry) and a small payload. Its ``seq`` orders all events of the host; the activity feed
pages by it and the SSE stream resumes from it (``Last-Event-ID``). Listeners run inside the
transaction that records the event (webhooks enqueue their deliveries there), so an event and
what it triggers are kept together or not at all. Recording never fails the operation that
caused it: a store error is logged. Old events are pruned by age (``EVENTS_MAX_AGE_S``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
import typing as t
import uuid

from app import actor
from app.clock import now_iso
from app.config import Settings
from app.errors import StoreUnavailable
from app.store.db import Store

log = logging.getLogger(__name__)
EVENT_TYPES = ("vm.created", "vm.started", "vm.stopped", "vm.deleted", "vm.expired",
               "vm.failed", "snapshot.created", "snapshot.deleted", "image.ready",
               "image.failed", "apikey.created", "apikey.revoked")


@dataclasses.dataclass(frozen=True)
class Event:
    seq: int
    id: str
    type: str
    time: str
    entity_type: str
    entity_id: str
    actor: str
    payload: dict[str, t.Any]

    def to_json(self) -> dict[str, t.Any]:
        """The event as the API, the SSE stream and webhooks show it."""
        return {"id": self.id, "seq": self.seq, "type": self.type, "time": self.time,
                "entity": {"type": self.entity_type, "id": self.entity_id},
                "actor": self.actor, "payload": self.payload}


Listener = t.Callable[[sqlite3.Connection, Event], None]


class Events:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(conn, event)`` inside each new event's transaction."""
        self._listeners.append(listener)

    def emit(self, type_: str, entity_type: str, entity_id: str,
             payload: t.Mapping[str, t.Any] | None = None, by: str | None = None
             ) -> Event | None:
        """Record an event; never raises (returns None when it could not be recorded).

        :param by: the actor; the current request's when None.
        """
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        body = json.dumps(dict(payload or {}), sort_keys=True, default=str)
        who = by or actor.current.get()
        event_id, when = uuid.uuid4().hex, now_iso()
        try:
            with self.store.transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO events (id, type, time, entity_type, entity_id, actor, "
                    "payload, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (event_id, type_, when, entity_type, entity_id, who, body, time.time()))
                event = Event(int(cursor.lastrowid or 0), event_id, type_, when, entity_type,
                              entity_id, who, json.loads(body))
                for listener in self._listeners:
                    listener(conn, event)
        except StoreUnavailable as exc:
            log.warning("event not recorded type=%s entity=%s: %s", type_, entity_id,
                        exc.message)
            return None
        log.info("event %s %s=%s actor=%s", type_, entity_type, entity_id, who)
        return event

    def recent(self, limit: int, types: t.Collection[str] = (),
               before: int | None = None) -> list[Event]:
        """Newest first: at most ``limit``, of ``types`` (all when empty), older than
        ``before`` (a seq) when given.

        :raises StoreUnavailable: the store cannot be read.
        """
        query, params = "SELECT * FROM events WHERE 1 = 1", []
        if types:
            query += f" AND type IN ({', '.join('?' * len(types))})"
            params += list(types)
        if before is not None:
            query += " AND seq < ?"
            params.append(before)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query + " ORDER BY seq DESC LIMIT ?",
                                [*params, limit]).fetchall()
        return [_event(row) for row in rows]

    def after(self, seq: int, limit: int = 100) -> list[Event]:
        """Oldest first: the events recorded after ``seq``."""
        with self.store.transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
        return [_event(row) for row in rows]

    def last_seq(self) -> int:
        with self.store.transaction(write=False) as conn:
            row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def prune(self) -> int:
        """Drop events older than ``EVENTS_MAX_AGE_S``; returns how many."""
        cutoff = time.time() - self.settings.events_max_age_s
        with self.store.transaction() as conn:
            return conn.execute("DELETE FROM events WHERE recorded_at < ?", (cutoff,)).rowcount


def _event(row: sqlite3.Row) -> Event:
    return Event(seq=row["seq"], id=row["id"], type=row["type"], time=row["time"],
                 entity_type=row["entity_type"], entity_id=row["entity_id"],
                 actor=row["actor"], payload=json.loads(row["payload"]))
