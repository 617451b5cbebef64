"""One SQLite file (WAL) shared by the service's processes, and its migration runner.

Each thread of each process has its own connection (gunicorn gthread workers run many
threads, and SQLite connections must not be shared between threads or carried across a
fork: a forked child opens its own). Connections stay open: closing the last one would
checkpoint the WAL and fsync on every use. Writers take the database lock up front
(``BEGIN IMMEDIATE``), so two processes never deadlock on an upgrade from read to write, and
wait ``busy_timeout`` for it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
import typing as t
from pathlib import Path

from app.errors import StoreUnavailable

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Each connection's page cache, KiB. With SQLite's default (2 MiB) and a connection per
# thread (~40 in a worker), a worker could hold ~80 MiB of cached pages once the exec history
# has grown; the OS's page cache has the file anyway.
PAGE_CACHE_KIB = 256


class Store:
    """The service's SQLite file.

    :param path: the database file; its directory is created (mode 0700) when missing.
    :param busy_timeout_s: how long a statement waits for another process's lock.
    """

    def __init__(self, path: Path | str, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; transaction() says BEGIN itself.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                               isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
        conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        return conn

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> t.Iterator[sqlite3.Connection]:
        """A connection inside one transaction: committed when the block ends, rolled back
        when it raises.

        :param write: take the write lock at once (``BEGIN IMMEDIATE``); reads use
            ``BEGIN DEFERRED``.
        :raises StoreUnavailable: for any SQLite error (locked past the timeout, disk full).
        """
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.close()  # a broken connection is not reused
            raise StoreUnavailable(f"state database unavailable: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection (the next use opens another)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._local.pid == os.getpid():
            conn.close()

    def open(self, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
        """Create the file if needed, switch it to WAL and apply pending migrations.

        Safe when several processes start at once: each runs the pending migrations inside
        one write transaction, so the first applies them and the others find them recorded.

        :returns: the names of the migrations this call applied.
        :raises StoreUnavailable: when the file cannot be created or a migration fails.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
            self._connection().execute("PRAGMA journal_mode = WAL")
            return self._migrate(_read_migrations(migrations_dir))
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"state database {self.path}: {exc}") from exc

    def _migrate(self, migrations: list[tuple[int, str, str]]) -> list[str]:
        applied_now = []
        with self.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                         "applied_at REAL NOT NULL)")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations:
                if version in done:
                    continue
                for statement in split_statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                             "VALUES (?, ?, ?)", (version, name, time.time()))
                applied_now.append(name)
        if applied_now:
            log.info("state database migrated path=%s applied=%s", self.path,
                     ",".join(applied_now))
        return applied_now


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (sessions and login attempts are
    nobody else's business); SQLite gives its -wal and -shm files the same mode.

    Never opens a file that exists: closing any descriptor of a file drops every POSIX lock
    this process holds on it, those of its open SQLite connections too. Another process then
    takes itself for the last user, removes the WAL index under them, and their next
    statement fails with "disk I/O error" (seen when a second app in one process opened the
    store, then a server process sharing the file stopped)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _read_migrations(directory: Path) -> list[tuple[int, str, str]]:
    """``NNNN_name.sql`` files in version order.

    :raises StoreUnavailable: for two files with one number, or a file named otherwise.
    """
    found: dict[int, tuple[int, str, str]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise StoreUnavailable(f"migration {path.name} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise StoreUnavailable(f"migrations {found[version][1]} and {path.name} share a number")
        found[version] = (version, path.name, path.read_text())
    return [found[version] for version in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """A script as single statements (``executescript`` would commit the transaction)."""
    statements, pending = [], ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending.strip())
            pending = ""
    rest = [line for line in pending.splitlines() if line.strip() and
            not line.strip().startswith("--")]
    if rest:
        raise StoreUnavailable(f"unterminated SQL statement: {' '.join(rest)[:80]!r}")
    return statements
