"""schemathesis over every operation of the OpenAPI document, against the app on the unit
fakes through WSGI (no VMs, no network): every check (tests/fuzzing.py), derandomized, a few
examples per operation. A 5xx, an answer the document does not describe, a valid request
refused or an invalid one taken, a 405 without ``Allow``: each fails the test.

The document is the golden copy (data/openapi.json), which test_api_docs.py holds equal to
what the app serves: loading it needs no app at import time (schemathesis's fixture-based
loader does not run under pytest 9)."""
from __future__ import annotations

import typing as t

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.fuzzing import CONFIG, Guard, Tally
from tests.unit.conftest import DATA_DIR
from tests.unit.fakes import API_KEY

EXAMPLES = 6  # per operation and phase; ~50 operations: under a minute
TALLY = Tally()
schema = schemathesis.openapi.from_path(DATA_DIR / "openapi.json", config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def summary() -> t.Iterator[None]:
    yield
    print("\n" + TALLY.summary("schemathesis over WSGI"))


@pytest.fixture
def fuzz_app(app, client, auth, world, services, monkeypatch):
    """The app, with three running VMs for the Guard to send the VM operations to."""
    # The event stream ends after STREAM_MAX_S; through WSGI the whole stream is read.
    monkeypatch.setattr("app.api.admin.STREAM_MAX_S", 0.2)
    # A webhook's host is checked by resolving it: never through the real resolver here (the
    # Guard makes every URL's host 127.0.0.1 anyway).
    monkeypatch.setattr(services.webhooks, "resolver", lambda _host, _port, _timeout: [
        "127.0.0.1"])
    vms = [world.add_vm(number).id for number in (1, 2, 3)]
    images = {image["id"] for image in client.get("/v1/images", headers=auth).get_json()}
    with Guard(vms, images, set(), sink="127.0.0.1:9").active():
        yield app


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, fuzz_app):
    # This test's app, for the call and for the checks that send more requests of their own.
    case.operation.schema.app = case.operation.app = fuzz_app
    TALLY.run(case, base_url="http://localhost", headers={"X-API-Key": API_KEY})
