"""Shared pytest setup: integration tests are marked automatically by their folder, and a run
that touched the host (integration or browser tests) ends with a leak check that fails it."""
from __future__ import annotations

import pathlib

import pytest

import leak_inventory

TESTS_DIR = pathlib.Path(__file__).parent
INTEGRATION_DIR = TESTS_DIR / "integration"
HOST_TEST_DIRS = (INTEGRATION_DIR, TESTS_DIR / "browser")
LEAK_BASELINE = pytest.StashKey[dict]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before the first test: what of this service is on the host already (on CI: nothing)."""
    touches_host = any(directory in pathlib.Path(str(item.fspath)).parents
                       for item in session.items for directory in HOST_TEST_DIRS)
    if touches_host and not session.config.option.collectonly:
        session.stash[LEAK_BASELINE] = leak_inventory.inventory()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """After every test and fixture: no domain, filter, binding, ipset, tap, overlay, snapshot,
    save image or image this run made may be left. A leak fails the run."""
    baseline = session.stash.get(LEAK_BASELINE, None)
    if baseline is None:
        return
    found = leak_inventory.leaks(baseline)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if found:
        if reporter:
            reporter.write_sep("=", "LEAK CHECK FAILED: the run left these on the host", red=True)
            reporter.write_line(leak_inventory.report(found))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter:
        reporter.write_sep("=", "leak check: nothing of this run is left on the host",
                           green=True)
