"""Webhooks: who is told about events, and the queue of what they are told.

A webhook has a name, an http(s) URL (checked by :mod:`app.services.webhook_urls`), the event
types it wants (none: all) and a secret that signs its deliveries. The secret is shown once,
when the webhook is created; it is stored as is because signing (HMAC) needs it.

:meth:`Webhooks.enqueue` is an :class:`~app.services.events.Events` listener: it runs inside
the transaction that records an event and adds one delivery per enabled webhook that wants
that type, so an event and its deliveries are stored together or not at all. Deliveries keep
the exact body they are sent with; :class:`~app.services.webhook_delivery.DeliveryWorker`
sends them in queue order, one at a time per webhook.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
import typing as t
import uuid

from app import actor
from app.clock import now_iso
from app.config import Settings
from app.errors import DeliveryInFlight, InvalidRequest, QuotaExceeded, WebhookNotFound
from app.services import webhook_urls
from app.services.events import EVENT_TYPES, Event
from app.store.db import Store

MAX_WEBHOOKS = 100
SECRET_PREFIX = "whsec_"
PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
DELIVERY_STATES = (PENDING, DELIVERING, DELIVERED, FAILED)


@dataclasses.dataclass(frozen=True)
class Webhook:
    id: str
    name: str
    url: str
    event_types: tuple[str, ...]
    enabled: bool
    created_at: str
    created_by: str
    updated_at: str
    secret: str | None = None  # only in the answer to the create

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


@dataclasses.dataclass(frozen=True)
class Delivery:
    id: str
    webhook_id: str
    position: int
    event_id: str
    event_type: str
    body: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float | None  # None once it is delivered or failed
    first_attempt_at: float | None
    last_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    finished_at: float | None


class Webhooks:
    """:param resolver: name resolution for the URL check (tests pass a fake)."""

    def __init__(self, settings: Settings, store: Store,
                 clock: t.Callable[[], float] = time.time,
                 resolver: webhook_urls.Resolver = webhook_urls.resolve) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.resolver = resolver

    # Webhooks ##############################################################################

    def create(self, name: str, url: str, event_types: t.Sequence[str] = (),
               enabled: bool = True) -> Webhook:
        """A new webhook, with its secret (the only time it is shown).

        :raises InvalidRequest: a URL webhooks may not be sent to, or an unknown event type.
        :raises QuotaExceeded: there are :data:`MAX_WEBHOOKS` already.
        """
        self.check_url(url)
        types = _types(event_types)
        webhook_id, when, secret = uuid.uuid4().hex, now_iso(), _new_secret()
        with self.store.transaction() as conn:
            count = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
            if count >= MAX_WEBHOOKS:
                raise QuotaExceeded(f"at most {MAX_WEBHOOKS} webhooks")
            conn.execute("INSERT INTO webhooks (id, name, url, event_types, enabled, secret, "
                         "created_at, created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
                         "?, ?)", (webhook_id, name, url, json.dumps(types), int(enabled),
                                   secret, when, actor.current.get(), when))
        return dataclasses.replace(self.get(webhook_id), secret=secret)

    def list(self) -> list[Webhook]:
        with self.store.transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM webhooks ORDER BY created_at, id").fetchall()
        return [_webhook(row) for row in rows]

    def get(self, webhook_id: str) -> Webhook:
        """:raises WebhookNotFound: no such webhook."""
        with self.store.transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
        if row is None:
            raise WebhookNotFound(f"webhook {webhook_id} not found")
        return _webhook(row)

    def update(self, webhook_id: str, changes: t.Mapping[str, t.Any]) -> Webhook:
        """Change ``name``, ``url``, ``event_types`` or ``enabled``. A disabled webhook's
        queued deliveries wait; they are sent once it is enabled again.

        :raises WebhookNotFound: no such webhook.
        :raises InvalidRequest: as :meth:`create`.
        """
        columns: dict[str, t.Any] = {}
        if "url" in changes:
            self.check_url(changes["url"])
            columns["url"] = changes["url"]
        if "name" in changes:
            columns["name"] = changes["name"]
        if "event_types" in changes:
            columns["event_types"] = json.dumps(_types(changes["event_types"]))
        if "enabled" in changes:
            columns["enabled"] = int(bool(changes["enabled"]))
        columns["updated_at"] = now_iso()
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with self.store.transaction() as conn:
            found = conn.execute(f"UPDATE webhooks SET {assignments} WHERE id = ?",
                                 [*columns.values(), webhook_id]).rowcount
        if not found:
            raise WebhookNotFound(f"webhook {webhook_id} not found")
        return self.get(webhook_id)

    def delete(self, webhook_id: str) -> None:
        """Remove a webhook and its deliveries (one being sent finishes unrecorded).

        :raises WebhookNotFound: no such webhook.
        """
        with self.store.transaction() as conn:
            found = conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount
        if not found:
            raise WebhookNotFound(f"webhook {webhook_id} not found")

    def check_url(self, url: str) -> webhook_urls.Target:
        """:raises InvalidRequest: see :func:`app.services.webhook_urls.check`."""
        return webhook_urls.check(url, self.settings.network, self.resolver)

    # The queue #############################################################################

    def enqueue(self, conn: sqlite3.Connection, event: Event) -> None:
        """The events listener: one delivery per enabled webhook that wants ``event``."""
        body = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True)
        now = self.clock()
        for row in conn.execute("SELECT id, event_types FROM webhooks WHERE enabled = 1 "
                                "ORDER BY id").fetchall():
            types = json.loads(row["event_types"])
            if types and event.type not in types:
                continue
            conn.execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, position, event_id, "
                "event_type, body, state, created_at, next_attempt_at) VALUES (?, ?, "
                "(SELECT COALESCE(MAX(position), 0) + 1 FROM webhook_deliveries), ?, ?, ?, "
                "?, ?, ?)", (uuid.uuid4().hex, row["id"], event.id, event.type, body, PENDING,
                             now, now))

    def deliveries(self, webhook_id: str, limit: int = 50,
                   states: t.Collection[str] = ()) -> list[Delivery]:
        """Newest first (queue order, so a redelivery is among the newest).

        :raises WebhookNotFound: no such webhook.
        """
        self.get(webhook_id)
        query, params = "SELECT * FROM webhook_deliveries WHERE webhook_id = ?", [webhook_id]
        if states:
            query += f" AND state IN ({', '.join('?' * len(states))})"
            params += list(states)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query + " ORDER BY position DESC LIMIT ?",
                                [*params, limit]).fetchall()
        return [delivery(row) for row in rows]

    def delivery(self, webhook_id: str, delivery_id: str) -> Delivery:
        """:raises WebhookNotFound: no such webhook or delivery."""
        with self.store.transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM webhook_deliveries WHERE id = ? AND "
                               "webhook_id = ?", (delivery_id, webhook_id)).fetchone()
        if row is None:
            raise WebhookNotFound(f"delivery {delivery_id} of webhook {webhook_id} not found")
        return delivery(row)

    def redeliver(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Send a delivery again: one that waits for its next try is tried now (in its
        place in the queue); a delivered or failed one goes to the end of the queue with
        its attempts and retry window reset.

        :raises WebhookNotFound: no such webhook or delivery.
        :raises DeliveryInFlight: it is being sent right now.
        """
        now = self.clock()
        with self.store.transaction() as conn:
            row = conn.execute("SELECT state FROM webhook_deliveries WHERE id = ? AND "
                               "webhook_id = ?", (delivery_id, webhook_id)).fetchone()
            if row is None:
                raise WebhookNotFound(f"delivery {delivery_id} of webhook {webhook_id} "
                                      "not found")
            if row["state"] == DELIVERING:
                raise DeliveryInFlight(f"delivery {delivery_id} is being sent; try again "
                                       "when it is done")
            if row["state"] == PENDING:
                conn.execute("UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                             (now, delivery_id))
            else:
                conn.execute(
                    "UPDATE webhook_deliveries SET state = ?, attempts = 0, "
                    "next_attempt_at = ?, first_attempt_at = NULL, finished_at = NULL, "
                    "position = (SELECT MAX(position) + 1 FROM webhook_deliveries) "
                    "WHERE id = ?", (PENDING, now, delivery_id))
        return self.delivery(webhook_id, delivery_id)

    def prune(self) -> int:
        """Drop delivered and failed deliveries older than ``EVENTS_MAX_AGE_S``."""
        cutoff = self.clock() - self.settings.events_max_age_s
        with self.store.transaction() as conn:
            return conn.execute("DELETE FROM webhook_deliveries WHERE state IN (?, ?) AND "
                                "finished_at < ?", (DELIVERED, FAILED, cutoff)).rowcount


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _types(event_types: t.Sequence[str]) -> list[str]:
    unknown = [name for name in event_types if name not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"eventTypes: unknown event type(s) {unknown[:5]}")
    return sorted(set(event_types))


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(id=row["id"], name=row["name"], url=row["url"],
                   event_types=tuple(json.loads(row["event_types"])),
                   enabled=bool(row["enabled"]), created_at=row["created_at"],
                   created_by=row["created_by"], updated_at=row["updated_at"])


def delivery(row: sqlite3.Row) -> Delivery:
    finished = row["state"] in (DELIVERED, FAILED)
    return Delivery(id=row["id"], webhook_id=row["webhook_id"], position=row["position"],
                    event_id=row["event_id"], event_type=row["event_type"], body=row["body"],
                    state=row["state"], attempts=row["attempts"], created_at=row["created_at"],
                    next_attempt_at=None if finished else row["next_attempt_at"],
                    first_attempt_at=row["first_attempt_at"],
                    last_attempt_at=row["last_attempt_at"],
                    last_status_code=row["last_status_code"], last_error=row["last_error"],
                    finished_at=row["finished_at"])
