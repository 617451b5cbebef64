"""The embedded SQLite store: WAL, migrations applied once each, safe across processes."""
from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import StoreUnavailable
from app.store.db import MIGRATIONS_DIR, Store, split_statements


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}


def test_open_creates_a_private_wal_file_and_applies_the_migrations(tmp_path):
    path = tmp_path / "state" / "state.db"
    applied = Store(path).open()
    assert applied == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        recorded = [row[0] for row in conn.execute("SELECT name FROM schema_migrations")]
    assert recorded == applied
    assert {"schema_migrations", "login_failures", "sessions"} <= tables(path)


MANY_THREADS_READ_A_4_MIB_TABLE = """
import sys, threading
from app.store.db import Store
store = Store(sys.argv[1])
store.open()
with store.transaction() as conn:
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany("INSERT INTO blobs (data) VALUES (?)",
                     [(bytes([i % 256]) * 2048,) for i in range(2048)])
def rss_kib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
def read_all():
    with store.transaction(write=False) as conn:
        for _ in conn.execute("SELECT data FROM blobs"):
            pass
read_all()
before = rss_kib()
threads = [threading.Event() for _ in range(32)]
def worker(done):
    read_all()  # each thread's connection stays open, with its page cache
    done.wait()
running = [threading.Thread(target=worker, args=(done,)) for done in threads]
for thread in running:
    thread.start()
import time; time.sleep(2)
print(rss_kib() - before)
for done in threads:
    done.set()
"""


def test_a_threads_connection_caches_little_of_the_file(tmp_path):
    """Every thread of a worker keeps its connection: 32 threads that each read a 4 MiB table
    hold at most 32 x 256 KiB of pages (SQLite's default, 2 MiB each, was ~64 MiB)."""
    grown = subprocess.run([sys.executable, "-c", MANY_THREADS_READ_A_4_MIB_TABLE,
                            str(tmp_path / "state.db")], capture_output=True, text=True,
                           timeout=60, check=True, cwd=Path(__file__).resolve().parents[2])
    assert int(grown.stdout) < 20 * 1024, grown.stdout


def test_open_again_applies_nothing(tmp_path):
    store = Store(tmp_path / "state.db")
    assert store.open()
    assert store.open() == []


def test_only_new_migrations_are_applied(tmp_path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_one.sql").write_text("CREATE TABLE one (x INTEGER);\n")
    store = Store(tmp_path / "state.db")
    assert store.open(migrations) == ["0001_one.sql"]
    (migrations / "0002_two.sql").write_text(
        "-- a comment; with a semicolon\nCREATE TABLE two (x TEXT DEFAULT 'a;b');\n"
        "INSERT INTO one VALUES (1);\n-- trailing comment\n")
    assert store.open(migrations) == ["0002_two.sql"]
    with store.transaction(write=False) as conn:
        assert [tuple(row) for row in conn.execute("SELECT x FROM one")] == [(1,)]


def test_a_failing_migration_leaves_nothing_behind(tmp_path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_good.sql").write_text("CREATE TABLE good (x INTEGER);\n")
    (migrations / "0002_bad.sql").write_text("CREATE TABLE bad (x INTEGER);\nNOT SQL;\n")
    store = Store(tmp_path / "state.db")
    with pytest.raises(StoreUnavailable):
        store.open(migrations)
    assert tables(tmp_path / "state.db") == set()


@pytest.mark.parametrize(("names", "words"), [
    (["1_short.sql"], "NNNN_name"), (["0001_a.sql", "0001_b.sql"], "share a number")])
def test_badly_named_migrations_are_refused(tmp_path, names, words):
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(StoreUnavailable, match=words):
        Store(tmp_path / "state.db").open(tmp_path)


def test_unterminated_statement_is_refused():
    assert split_statements("SELECT 1;\n-- end\n") == ["SELECT 1;"]
    with pytest.raises(StoreUnavailable, match="unterminated"):
        split_statements("SELECT 1;\nSELECT 2\n")


def _open_in_child(path: str, queue: multiprocessing.Queue) -> None:
    try:
        queue.put(Store(path).open())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        queue.put(repr(exc))


def test_processes_starting_at_once_apply_each_migration_once(tmp_path):
    path = str(tmp_path / "state.db")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_open_in_child, args=(path, queue)) for _ in range(6)]
    for child in children:
        child.start()
    results = [queue.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert all(isinstance(result, list) for result in results), results
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(
            applied)


def test_transaction_commits_or_rolls_back(tmp_path):
    store = Store(tmp_path / "state.db")
    store.open()
    with store.transaction() as conn:
        conn.execute("INSERT INTO sessions VALUES ('a', 'e', 'f', 1, 1, NULL)")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO sessions VALUES ('b', 'e', 'f', 1, 1, NULL)")
        raise RuntimeError("boom")
    with store.transaction(write=False) as conn:
        assert [row["id_hash"] for row in conn.execute("SELECT id_hash FROM sessions")] == ["a"]


def test_sqlite_errors_become_store_unavailable(tmp_path):
    store = Store(tmp_path / "state.db")
    store.open()
    with pytest.raises(StoreUnavailable, match="state database"), store.transaction() as conn:
        conn.execute("SELECT * FROM no_such_table")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailable):
        Store(tmp_path / "dir.db").open()


def test_a_second_store_in_one_process_keeps_the_first_ones_locks(tmp_path):
    """Opening the store again in a process whose connections are open must not close a
    descriptor of the file (that drops the process's POSIX locks): another process closing
    its last connection would then remove the WAL index under them ("disk I/O error")."""
    path = tmp_path / "state.db"
    first = Store(path)
    first.open()
    with first.transaction() as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    Store(path).open()  # a second app in this process (a restart in a test)
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                    "c.execute('SELECT count(*) FROM t').fetchall(); c.close()", str(path)],
                   check=True, timeout=30)
    assert (tmp_path / "state.db-wal").exists()  # the other process knew it was not last
    with first.transaction(write=False) as conn:
        assert conn.execute("SELECT x FROM t").fetchall()[0][0] == 1
    fresh = Store(path)
    with fresh.transaction(write=False) as conn:
        assert conn.execute("SELECT x FROM t").fetchall()[0][0] == 1


def test_an_existing_database_left_readable_by_others_is_made_private(tmp_path):
    path = tmp_path / "state.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    Store(path).open()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
