"""The leak check's bookkeeping (the inventory itself reads the host: integration runs)."""
from __future__ import annotations

import leak_inventory


def test_only_what_is_new_since_the_start_is_a_leak():
    before = {"domains": {"rds-old"}, "ipsets": set(), "taps": {"rds-1"}}
    after = {"domains": {"rds-old", "rds-new"}, "ipsets": set(), "taps": {"rds-1"},
             "custom images": {"/x/itest-1"}}
    assert leak_inventory.new_since(before, after) == {
        "domains": {"rds-new"}, "custom images": {"/x/itest-1"}}
    assert leak_inventory.new_since(after, after) == {}


def test_the_report_names_each_kind_and_item():
    text = leak_inventory.report({"taps": {"rds-b", "rds-a"}})
    assert text == "  taps: rds-a, rds-b"


def test_store_connections_are_not_counted(monkeypatch):
    db = str(leak_inventory.STORAGE_ROOT / "state.db")
    monkeypatch.setattr(leak_inventory, "open_fds",
                        lambda pid: [db, db + "-wal", "socket:[1]", "/dev/null"])
    assert leak_inventory.countable_fds(1) == ["socket:[1]", "/dev/null"]
