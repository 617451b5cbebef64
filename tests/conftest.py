"""Shared pytest setup: integration tests are marked automatically by their folder."""
from __future__ import annotations

import pathlib

import pytest

INTEGRATION_DIR = pathlib.Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
