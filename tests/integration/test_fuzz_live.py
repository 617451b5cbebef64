"""schemathesis against a live gunicorn with real VMs (issue 16): every operation of the live
OpenAPI document, every check, with a valid key; zero 5xx and zero check failures.

The operations on a VM are bound to three shared VMs (the suite's seed shape, restored from its
memory snapshot), so the cases reach real guests rather than 404s. ``make fuzz`` is the long
run of this same module with every phase (``FUZZ_PHASES``, ``FUZZ_MAX_EXAMPLES``,
``FUZZ_MIN_CASES``); by default it is bounded to ~200 cases in under a minute.

What the fuzzer is not let do (tests.fuzzing.Guard, applied to every request as it is
sent): delete the shared VMs, or an image or snapshot that existed before; send a webhook
anywhere but a sink of this test's on 127.0.0.1 (no name is resolved, no delivery leaves the
host; the server also runs without the maintainer, so it delivers nothing at all); run a
command in a VM whose egress policy it changed.

Every VM, snapshot, webhook and API key the run made (the ids its creates answered) is
deleted (revoked) at the end, and the test fails if anything is listed then that was not
before.

Left out (the unit run, tests/unit/test_schemathesis_wsgi.py, covers both): ``GET
/v1/admin/events`` (its stream lasts five minutes) and ``POST /v1/images`` (a build boots a VM
that runs the body's setup script).
"""
from __future__ import annotations

import http.server
import os
import threading
import time
import typing as t
import urllib.parse

import httpx
import pytest
import schemathesis
from schemathesis.engine import events as engine_events

from tests.fuzzing import SHAPE, Guard, Tally, config_dict
from tests.integration.conftest import live_server, no_upkeep_config

pytestmark = pytest.mark.integration

API_KEY = "fuzz-test-key"
HEADERS = {"X-API-Key": API_KEY}
EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "3"))  # per operation and phase
MIN_CASES = int(os.environ.get("FUZZ_MIN_CASES", "150"))
SEED = int(os.environ.get("FUZZ_SEED", "16"))
# The bounded run leaves out the coverage phase (boundary values and the undeclared methods of
# every operation: ~1,500 cases alone; the unit run has it) and the stateful one (chains of
# calls along the links schemathesis infers); make fuzz runs them.
PHASES = os.environ.get("FUZZ_PHASES", "examples,fuzzing").split(",")
# streamEvents: a five-minute stream. createImage: a build boots a VM that runs the body's
# setup script, and on a shared host any server's maintainer takes the build up (this one has
# none). The unit run covers both.
LEFT_OUT = ("streamEvents", "createImage")


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: t.Any) -> None:
        pass


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    directory = tmp_path_factory.mktemp("fuzz-server")
    log_path = directory / "server.log"
    print(f"fuzz server log: {log_path}")
    # MAX_VMS: the three shared VMs and up to five of the fuzzer's at a time (then 429), which
    # two TCG cores carry without slowing the guests' answers past their timeouts.
    env = {"API_KEY": API_KEY, "WEB_WORKERS": "2", "SNAPSHOT_AUTO_BUILD": "false",
           "ENABLE_WARM_POOL": "false", "WEBHOOK_TIMEOUT_S": "2", "MAX_VMS": "8"}
    with log_path.open("w") as log, live_server(
            env, "-c", str(no_upkeep_config(directory)), output=log) as (base, _process):
        yield base


@pytest.fixture(scope="module")
def rest(fuzz_server: str) -> t.Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server, headers=HEADERS, timeout=300,
                      trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def sink() -> t.Iterator[str]:
    """Where the fuzzer's webhooks point: an HTTP server on loopback that takes any POST."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def inventory(rest: httpx.Client) -> dict[str, set[str]]:
    """The ids of everything the fuzzer can make."""
    def ids(path: str, key: str = "id") -> set[str]:
        response = rest.get(path)
        assert response.status_code == 200, (path, response.text)
        return {item[key] for item in response.json()}

    return {"vms": ids("/v1/vms"), "images": ids("/v1/images"),
            "snapshots": ids("/v1/snapshots"), "webhooks": ids("/v1/admin/webhooks"),
            "keys": ids("/v1/admin/api-keys")}


def remove(rest: httpx.Client, created: dict[str, set[str]]) -> list[str]:
    """Delete (revoke) what the run created (Guard.record); returns what could not be."""
    left: list[str] = []
    plans = {"vms": ("DELETE", "/v1/vms/{}?wait=true"),
             "snapshots": ("DELETE", "/v1/snapshots/{}"),
             "webhooks": ("DELETE", "/v1/admin/webhooks/{}"),
             "images": ("DELETE", "/v1/images/{}"),
             "keys": ("POST", "/v1/admin/api-keys/{}/revoke")}
    for kind in ("vms", "snapshots", "images", "webhooks", "keys"):
        method, path = plans[kind]
        for item in sorted(created.get(kind, ())):
            response = rest.request(method, path.format(urllib.parse.quote(item, safe="")))
            if response.status_code >= 300 and response.status_code != 404:
                left.append(f"{kind} {item}: {response.status_code} {response.text[:200]}")
    return left


@pytest.fixture(scope="module")
def shared_vms(rest: httpx.Client) -> t.Iterator[list[str]]:
    """VMs A, B and C (see the module docstring)."""
    made: list[str] = []
    try:
        for name in "abc":
            response = rest.post("/v1/vms", json={**SHAPE, "labels": {"fuzz-shared": name}})
            assert response.status_code == 201, response.text
            made.append(response.json()["id"])
        yield made
    finally:
        for vm_id in made:
            rest.delete(f"/v1/vms/{vm_id}", params={"wait": "true"})


def run_engine(schema: t.Any, tally: Tally) -> None:
    """Run schemathesis's engine (what ``st run`` runs) and tally every interaction and
    every failed check or error."""
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, (engine_events.ScenarioFinished,
                              engine_events.FuzzScenarioFinished)):
            tally.record(event.recorder)
        elif isinstance(event, (engine_events.NonFatalError, engine_events.FatalError)):
            error = getattr(event, "value", None) or getattr(event, "exception", None)
            tally.failures.append(f"{getattr(event, 'label', 'engine')}: {error!r}")


def test_live_api_fuzz(fuzz_server, rest, shared_vms, sink):
    before = inventory(rest)
    images = before["images"]
    guard = Guard(shared_vms, images, before["snapshots"], sink)
    config = schemathesis.Config.from_dict(config_dict(
        seed=SEED, max_examples=EXAMPLES, headers=HEADERS,
        phases={phase: {"enabled": phase in PHASES}
                for phase in ("examples", "coverage", "fuzzing", "stateful")}))
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json", config=config)
    schema = schema.exclude(operation_id=list(LEFT_OUT))
    tally = Tally()
    started = time.monotonic()
    try:
        with guard.active():
            run_engine(schema, tally)
    finally:
        left = remove(rest, guard.created)
    after = inventory(rest)  # nothing new, however it was made (revoked keys stay listed)
    left += [f"{kind}: {sorted(after[kind] - before[kind])}" for kind in after
             if kind != "keys" and after[kind] - before[kind]]
    elapsed = time.monotonic() - started
    print(tally.summary(f"live fuzz (seed {SEED}, phases {','.join(PHASES)}, {EXAMPLES} "
                        f"examples per operation and phase, {elapsed:.0f} s)"))
    for vm_id in shared_vms:  # the shared VMs are still there
        assert rest.get(f"/v1/vms/{vm_id}").status_code == 200, vm_id
    assert not left, f"left behind: {left}"
    assert not tally.failures, "\n\n".join(tally.failures[:20])
    assert not tally.server_errors(), tally.summary("5xx")
    assert tally.cases >= MIN_CASES, tally.summary("too few cases")
