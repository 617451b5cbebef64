"""Client fixtures: the SDK over ``httpx.MockTransport`` (no server, no network)."""
from __future__ import annotations

import typing as t

import pytest

from tests.client.fakeapi import FakeApi


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> t.Iterator[t.Any]:
    with api.client() as sdk_client:
        yield sdk_client
