"""run-ts through a warm Deno: a Deno started ahead in the guest (guest/README.md, "run-ts").

These tests look at the guest's side of it (the spare's files in /run/rds-deno and its
processes) as well as at the API's answers, which must not depend on which way a run took.
"""
from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import SEED_BODY, exec_ok

SPOOL = "/run/rds-deno"
# A run's program: /run/rds-deno/<marker>.ts (cold) or <key>.<marker>.ts (warm).
WARM_URL = re.compile(r"^file:///run/rds-deno/[0-9a-f]{16}\.[0-9a-f]{32}\.ts$")
COLD_URL = re.compile(r"^file:///run/rds-deno/[0-9a-f]{32}\.ts$")


@pytest.fixture(scope="module")
def vm(api):
    created = api.create_vm(SEED_BODY)
    yield created
    api.delete_vm(created["id"])


def _run(api, vm, **body):
    response = api.request("POST", f"/v1/vms/{vm['id']}/run-ts", json=body)
    assert response.status_code == 200, response.json
    return response.json


def _spares(api, vm) -> dict:
    """The guest's spares: stems with a .pid, claimed or not, and the Deno processes."""
    listing = exec_ok(api, vm["id"], f"cd {SPOOL} 2>/dev/null && ls; echo --; "
                                     "ps -u user -o args= | grep '^deno run' || true")
    files, _, processes = listing["stdout"].partition("--\n")
    names = files.split()
    stems = {name[:-len(".pid")] for name in names if name.endswith(".pid")}
    return {"files": names, "idle": {s for s in stems if f"{s}.claim" not in names},
            "deno": [line for line in processes.splitlines() if line]}


def _settle(api, vm, timeout: float = 30) -> dict:
    """Wait until the spare a run started is there and nothing else is (its files are made
    before the run answers; the Deno behind them takes ~2 s under emulation)."""
    deadline = time.monotonic() + timeout
    while True:
        state = _spares(api, vm)
        if len(state["deno"]) == len(state["idle"]) == 1 or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


PROBE = ("result.set({url: import.meta.url, main: import.meta.main, args: Deno.args, "
         "argv: process.argv.slice(2), k: Deno.env.get('K')})")


def test_the_second_run_takes_the_warm_deno_with_its_own_args_and_env(api, vm):
    first = _run(api, vm, code=PROBE, args=["one"], env=["K=first"])
    assert COLD_URL.match(first["result"]["url"]), first
    state = _settle(api, vm)
    assert len(state["idle"]) == 1 and len(state["deno"]) == 1, state
    second = _run(api, vm, code=PROBE, args=["two", "a b"], env=["K=second"])
    assert WARM_URL.match(second["result"]["url"]), second
    # A Deno started before the run was known answers with this run's args and env.
    assert second["result"] == {"url": second["result"]["url"], "main": True,
                                "args": ["two", "a b"], "argv": ["two", "a b"], "k": "second"}
    assert first["result"]["main"] is True and first["result"]["k"] == "first"
    assert first["result"]["args"] == first["result"]["argv"] == ["one"]
    # The claimed spare's files went with it; a new one waits for the next run.
    state = _settle(api, vm)
    assert len(state["idle"]) == 1 and len(state["deno"]) == 1, state
    assert all(name.startswith(tuple(state["idle"])) for name in state["files"]), state


def test_runs_in_a_row_each_find_the_spare_the_last_one_started(api, vm):
    """Each run starts the next spare as soon as it has used its own, even while that one's
    launcher is still cleaning up (they must not mistake it for an idle spare)."""
    urls = [_run(api, vm, code="result.set(import.meta.url)", env=["ROW=1"])["result"]
            for _ in range(5)]
    assert all(WARM_URL.match(url) for url in urls[1:]), urls
    assert len(set(urls)) == 5


def test_warm_runs_keep_the_result_contract(api, vm):
    _run(api, vm, code="1")
    _settle(api, vm)
    body = _run(api, vm, code="console.log('out'); console.error('err');\n"
                              "throw new RangeError('warm boom')")
    assert body["stdout"] == "out\n" and body["stderr"] == "err\n"
    assert body["exitCode"] != 0 and body["error"]["name"] == "RangeError"
    assert re.search(r"/run/rds-deno/[0-9a-f.]+\.ts:2:7", body["error"]["stack"]), body
    _settle(api, vm)
    body = _run(api, vm, code="console.log('bye'); Deno.exit(3)")
    assert body["exitCode"] == 3 and body["stdout"] == "bye\n"
    _settle(api, vm)
    exec_ok(api, vm["id"], "echo 'export const n = 6;' > six.ts")
    body = _run(api, vm, code="import { n } from './six.ts';\n"
                              "result.set([n * 7, import.meta.url])")
    # Relative imports resolve in /workspace, as with a cold run (test_run_code).
    assert body["result"][0] == 42 and WARM_URL.match(body["result"][1]), body


def test_the_code_arrives_byte_for_byte(api, vm):
    code = 'result.set(["a\x00b".length, "h\u00e9llo \u2713", import.meta.url])'
    for _ in range(2):  # the second run is a warm one
        body = _run(api, vm, code=code)
        assert body["result"][:2] == [3, "h\u00e9llo \u2713"], body
        _settle(api, vm)
    assert WARM_URL.match(body["result"][2]), body


def test_one_idle_spare_per_vm(api, vm):
    _run(api, vm, code="1", env=["A=1"])
    _settle(api, vm)
    _run(api, vm, code="1", env=["B=1"])  # other flags: the idle spare of A is retired
    state = _settle(api, vm)
    assert len(state["idle"]) == 1 and len(state["deno"]) == 1, state
    assert "--allow-env=B" in state["deno"][0]


def test_variables_deno_reads_at_start_never_take_a_warm_deno(api, vm):
    _run(api, vm, code="1")
    _settle(api, vm)
    body = _run(api, vm, code="result.set(import.meta.url)", env=["NO_COLOR=1"])
    assert COLD_URL.match(body["result"]), body


def test_deno_flags_reach_the_warm_deno_and_others_run_cold(api, vm):
    probe = "result.set([Math.random(), import.meta.url])"
    first = _run(api, vm, code=probe, denoFlags=["--seed=7"])
    _settle(api, vm)
    second = _run(api, vm, code=probe, denoFlags=["--seed=7"])
    assert WARM_URL.match(second["result"][1]), second
    assert first["result"][0] == second["result"][0]  # the same seed, warm or not
    # A flag that changes how Deno loads the program never takes (or starts) a spare.
    body = _run(api, vm, code=probe, denoFlags=["--no-check", "--seed=7"])
    assert COLD_URL.match(body["result"][1]) and body["result"][0] == first["result"][0]


def test_a_spare_killed_by_the_user_is_not_waited_for(api, vm):
    _run(api, vm, code="1")
    state = _settle(api, vm)
    assert len(state["deno"]) == 1, state
    exec_ok(api, vm["id"], "pkill -KILL -u user -x deno; true")
    body = _run(api, vm, code="result.set(2 + 2)", timeoutMs=20000)
    assert body["exitCode"] == 0 and body["result"] == 4 and body["timedOut"] is False


def test_a_warm_run_that_times_out_takes_its_spare_along(api, vm):
    _run(api, vm, code="1")
    _settle(api, vm)
    body = _run(api, vm, code="await new Promise(() => setInterval(() => {}, 1000))",
                timeoutMs=5000)
    assert body["timedOut"] is True and body["exitCode"] == -1
    state = _spares(api, vm)
    assert state["deno"] == [] and state["files"] == [], state


def test_a_project_config_applies_to_the_code(api, vm):
    """With a deno.json in the workspace the code runs as `deno run -` in /workspace, so the
    config's import map applies to it (no warm Deno for these runs)."""
    exec_ok(api, vm["id"], "mkdir -p proj/lib && echo 'export const v = \"mapped\";' > "
                           "proj/lib/v.ts && echo '{\"imports\": {\"@lib/\": \"./proj/lib/\"}}' "
                           "> deno.json")
    try:
        for _ in range(2):
            body = _run(api, vm, code="import { v } from '@lib/v.ts';\n"
                                      "result.set([v, import.meta.main])")
            assert body["exitCode"] == 0 and body["result"] == ["mapped", True], body
    finally:
        exec_ok(api, vm["id"], "rm -rf deno.json proj six.ts")
    assert not [name for name in _spares(api, vm)["files"] if name.endswith(".request")]
