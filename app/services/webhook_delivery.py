"""Sending webhook deliveries: signed POSTs, in order, retried with backoff, crash-safe.

The maintenance owner (:class:`~app.services.maintenance.Maintainer`, one process per host)
calls :meth:`DeliveryWorker.run_once` every fraction of a second. A round:

1. takes the *head* of each enabled webhook's queue (its oldest delivery that is not
   delivered or failed), so deliveries go out in event order, one at a time per webhook;
2. claims each head that is due (``pending`` with ``next_attempt_at`` reached, or
   ``delivering`` under a claim that expired: its worker died) in the store, which counts
   the attempt;
3. sends the claimed ones on a small thread pool (``WEBHOOK_PARALLEL``), so one slow
   receiver does not hold up the others.

A 2xx answer marks the delivery ``delivered``. Anything else (another status, a timeout, a
refused connection, an address the SSRF guard refuses now) is a failed attempt: the next one
is ``WEBHOOK_RETRY_BASE_S`` doubling per attempt up to ``WEBHOOK_RETRY_MAX_S``, with jitter,
until ``WEBHOOK_RETRY_FOR_S`` have passed since the first attempt; then it is ``failed`` and
the webhook's next delivery goes. Redirects are not followed.

The queue lives in SQLite, so a restart loses nothing: a new owner first puts back what a
dead one had claimed (the flock it now holds says that one is gone), and a claim also
expires on its own after the send's time limit.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import os
import random
import sqlite3
import threading
import time
import typing as t
import uuid

import httpx

from app.config import Settings
from app.errors import InvalidRequest
from app.services import webhook_urls
from app.services.webhooks import DELIVERED, DELIVERING, FAILED, PENDING
from app.store.db import Store

log = logging.getLogger(__name__)
CLAIM_MARGIN_S = 30.0  # a claim outlives the send's time limit by this much
USER_AGENT = "run-dat-sheesh-webhooks/1"
MAX_ERROR_CHARS = 500


class SendFailed(Exception):
    """The POST did not get an answer (connection, TLS, timeout); the message says why."""


Sender = t.Callable[[webhook_urls.Target, bytes, t.Mapping[str, str], float], int]


def signature(secret: str, timestamp: int, body: str | bytes) -> str:
    """The ``X-RDS-Signature`` value: ``t=<unix time>,v1=<hex HMAC-SHA256>`` of
    ``"<t>.<body>"`` keyed with the webhook's secret."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class HttpSender:
    """POSTs with httpx to the address the SSRF check chose (the Host header and TLS name
    stay the URL's), without proxies from the environment and without following redirects;
    the answer's body is not read."""

    def __init__(self) -> None:
        self._client: httpx.Client | None = None  # made on first use (in the owner only)
        self._lock = threading.Lock()

    def __call__(self, target: webhook_urls.Target, body: bytes,
                 headers: t.Mapping[str, str], timeout: float) -> int:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(trust_env=False, follow_redirects=False)
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST", target.pinned_url(), content=body,
            headers={**headers, "Host": target.host_header}, extensions=extensions,
            timeout=httpx.Timeout(timeout))
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from None
        response.close()
        return response.status_code

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclasses.dataclass(frozen=True)
class Job:
    """A claimed delivery with what sending it needs."""

    id: str
    webhook_id: str
    event_type: str
    body: str
    attempts: int
    first_attempt_at: float
    url: str
    secret: str


class DeliveryWorker:
    """:param sender: does the POST (tests pass a fake); :class:`HttpSender` when None.
    :param parallel: send on a thread pool; False sends inside :meth:`run_once` (tests).
    :param jitter: a number in [0, 1) per retry; the wait is between half and all of the
        backoff step."""

    def __init__(self, settings: Settings, store: Store, sender: Sender | None = None,
                 clock: t.Callable[[], float] = time.time,
                 jitter: t.Callable[[], float] = random.random,
                 resolver: webhook_urls.Resolver = webhook_urls.resolve,
                 parallel: bool = True) -> None:
        self.settings = settings
        self.store = store
        self.sender = sender or HttpSender()
        self.clock = clock
        self.jitter = jitter
        self.resolver = resolver
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pool = concurrent.futures.ThreadPoolExecutor(
            settings.webhook_parallel, thread_name_prefix="rds-webhook") if parallel else None
        self._busy: set[str] = set()  # webhooks with a send in flight in this process
        self._lock = threading.Lock()
        self._recovered = False

    def run_once(self) -> int:
        """Claim the due heads and send them; returns how many sends were started."""
        if not self._recovered:
            self.recover()
            self._recovered = True
        with self._lock:
            busy = set(self._busy)
        free = self.settings.webhook_parallel - len(busy)
        jobs = self.claim(free, busy) if free > 0 else []
        for job in jobs:
            if self._pool is None:
                self.deliver(job)
                continue
            with self._lock:
                self._busy.add(job.webhook_id)
            self._pool.submit(self._deliver_in_pool, job)
        return len(jobs)

    def close(self) -> None:
        """Stop sending (sends in flight finish; their claims expire if they do not)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def recover(self) -> int:
        """Put back what other workers had claimed: this one is the host's only worker now
        (it holds the maintenance lock), so they are dead. Returns how many."""
        with self.store.transaction() as conn:
            count = conn.execute(
                "UPDATE webhook_deliveries SET state = ?, claimed_by = NULL, "
                "claim_expires_at = NULL, next_attempt_at = ? WHERE state = ? AND "
                "claimed_by IS NOT ?", (PENDING, self.clock(), DELIVERING, self.token)).rowcount
        if count:
            log.info("webhook deliveries claimed by a dead worker put back count=%s", count)
        return count

    # Claiming ##############################################################################

    def claim(self, limit: int, busy: t.Collection[str] = ()) -> list[Job]:
        """Claim up to ``limit`` due heads of webhooks not in ``busy``; counts the attempt."""
        now = self.clock()
        lease = now + self.settings.webhook_timeout_s + webhook_urls.RESOLVE_TIMEOUT_S + \
            CLAIM_MARGIN_S
        jobs: list[Job] = []
        with self.store.transaction() as conn:
            for row in _heads(conn):
                if len(jobs) >= limit:
                    break
                if row["webhook_id"] in busy or not _due(row, now):
                    continue
                conn.execute(
                    "UPDATE webhook_deliveries SET state = ?, claimed_by = ?, "
                    "claim_expires_at = ?, attempts = attempts + 1, last_attempt_at = ?, "
                    "first_attempt_at = COALESCE(first_attempt_at, ?) WHERE id = ?",
                    (DELIVERING, self.token, lease, now, now, row["id"]))
                jobs.append(Job(id=row["id"], webhook_id=row["webhook_id"],
                                event_type=row["event_type"], body=row["body"],
                                attempts=row["attempts"] + 1,
                                first_attempt_at=row["first_attempt_at"] or now,
                                url=row["url"], secret=row["secret"]))
        return jobs

    # Sending ###############################################################################

    def deliver(self, job: Job) -> str:
        """Send one claimed delivery and record how it went; returns its new state."""
        status, error = None, None
        try:
            target = webhook_urls.check(job.url, self.settings.network, self.resolver)
            status = self.sender(target, job.body.encode(), self.headers(job),
                                 self.settings.webhook_timeout_s)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except InvalidRequest as exc:
            error = f"refused: {exc.message}"
        except SendFailed as exc:
            error = str(exc)
        except Exception as exc:  # a sender bug must not leave it claimed
            log.exception("webhook delivery %s: unexpected error", job.id)
            error = f"{type(exc).__name__}: {exc}"
        return self.record(job, status, error)

    def headers(self, job: Job) -> dict[str, str]:
        return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                "X-RDS-Event": job.event_type, "X-RDS-Delivery": job.id,
                "X-RDS-Signature": signature(job.secret, int(self.clock()), job.body)}

    def record(self, job: Job, status: int | None, error: str | None) -> str:
        now = self.clock()
        if error is None:
            state, next_at = DELIVERED, now
        elif now - job.first_attempt_at >= self.settings.webhook_retry_for_s:
            state, next_at = FAILED, now
        else:
            state, next_at = PENDING, now + self.backoff(job.attempts)
        finished = now if state != PENDING else None
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, "
                "last_status_code = ?, last_error = ?, finished_at = ?, claimed_by = NULL, "
                "claim_expires_at = NULL WHERE id = ? AND state = ? AND claimed_by = ?",
                (state, next_at, status, error[:MAX_ERROR_CHARS] if error else None, finished,
                 job.id, DELIVERING, self.token))
        level = logging.WARNING if state == FAILED else logging.INFO
        log.log(level, "webhook delivery %s webhook=%s event=%s attempt=%s status=%s%s",
                state, job.webhook_id, job.event_type, job.attempts, status,
                f" error={error!r}" if error else "")
        return state

    def backoff(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt."""
        step = min(self.settings.webhook_retry_base_s * 2 ** min(attempts - 1, 40),
                   self.settings.webhook_retry_max_s)
        return step / 2 + self.jitter() * step / 2

    def _deliver_in_pool(self, job: Job) -> None:
        try:
            self.deliver(job)
        except Exception:  # the store failed: the claim expires and it is retried
            log.exception("webhook delivery %s not recorded", job.id)
        finally:
            with self._lock:
                self._busy.discard(job.webhook_id)


def _heads(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Each enabled webhook's oldest open delivery, oldest first."""
    return conn.execute(
        "SELECT d.*, w.url, w.secret FROM webhook_deliveries d JOIN webhooks w ON "
        "w.id = d.webhook_id WHERE w.enabled = 1 AND d.position = (SELECT MIN(o.position) "
        "FROM webhook_deliveries o WHERE o.webhook_id = d.webhook_id AND o.state IN (?, ?)) "
        "ORDER BY d.position", (PENDING, DELIVERING)).fetchall()


def _due(row: sqlite3.Row, now: float) -> bool:
    if row["state"] == PENDING:
        return row["next_attempt_at"] <= now
    return row["claim_expires_at"] is None or row["claim_expires_at"] <= now
