"""POST /run-ts (Deno) and /run-js (Node.js) against a real guest."""
from __future__ import annotations

import re

import pytest

from tests.integration.conftest import exec_ok


def _run(api, vm, kind="ts", **body):
    response = api.request("POST", f"/v1/vms/{vm['id']}/run-{kind}", json=body)
    assert response.status_code == 200, response.json
    return response.json


def test_seed_example_console_log(api, shared_vm):
    body = _run(api, shared_vm, code="console.log(2+2)")
    assert body["exitCode"] == 0 and body["stdout"] == "4\n"
    assert "result" not in body and "error" not in body


def test_seed_example_result_set(api, shared_vm):
    body = _run(api, shared_vm, code="result.set({sum: 1+2, list: [1, 'a'], nested: {ok: true}})")
    assert body["exitCode"] == 0
    assert body["result"] == {"sum": 3, "list": [1, "a"], "nested": {"ok": True}}


def test_seed_example_result_error(api, shared_vm):
    body = _run(api, shared_vm, code='result.error(new TypeError("nope"))')
    assert body["exitCode"] != 0
    assert body["error"]["name"] == "TypeError" and body["error"]["message"] == "nope"
    # The caller's code is Deno's main module (/run/rds-deno/<run>.ts); its line numbers
    # are kept.
    assert re.search(r"/run/rds-deno/[0-9a-f.]+\.ts:1:", body["error"]["stack"]), body


def test_env_is_set_and_only_passed_keys_are_readable(api, shared_vm):
    code = ("const other = (() => { try { return Deno.env.get('HOME'); } "
            "catch (e) { return e.name; } })();\n"
            "const node = (await import('node:process')).env.GREETING;\n"
            "result.set({greeting: Deno.env.get('GREETING'), other, node})")
    body = _run(api, shared_vm, code=code, env=["GREETING=hi there"])
    assert body["result"] == {"greeting": "hi there", "other": "NotCapable", "node": "hi there"}
    # The run's request (token, env, args) lies in the spool, which no run may read.
    body = _run(api, shared_vm, code="result.set([...Deno.readDirSync('/run/rds-deno')])")
    assert body["error"]["name"] == "NotCapable", body
    left = exec_ok(api, shared_vm["id"], "cd /run/rds-deno && ls")["stdout"].split()
    assert not [name for name in left if name.endswith(".request") and "." not in
                name[:-len(".request")]], left


@pytest.mark.parametrize(("route", "body"), [
    ("exec", {"cmd": "echo \"$GREETING\""}),
    ("run-ts", {"code": "console.log(Deno.env.get('GREETING'))"}),
    ("run-js", {"code": "console.log(process.env.GREETING)"}),
])
@pytest.mark.parametrize("env", [{"GREETING": "a=b c"}, ["GREETING=a=b c"]],
                         ids=["object", "list"])
def test_env_in_either_form(api, shared_vm, route, body, env):
    """exec took an object and run-ts/run-js a list; each takes both."""
    response = api.request("POST", f"/v1/vms/{shared_vm['id']}/{route}",
                           json={**body, "env": env})
    assert response.status_code == 200, response.json
    assert (response.json["exitCode"], response.json["stdout"]) == (0, "a=b c\n"), response.json


def test_plain_object_error_passes_through(api, shared_vm):
    body = _run(api, shared_vm, code="result.error({code: 42, why: 'bad'})")
    assert body["exitCode"] != 0 and body["error"] == {"code": 42, "why": "bad"}


def test_uncaught_throw_fills_error(api, shared_vm):
    body = _run(api, shared_vm, code="console.log('before');\nthrow new RangeError('boom')")
    assert body["exitCode"] != 0 and body["stdout"] == "before\n"
    assert body["error"]["name"] == "RangeError" and body["error"]["message"] == "boom"
    assert re.search(r"/run/rds-deno/[0-9a-f.]+\.ts:2:", body["error"]["stack"]), body


def test_code_imports_workspace_modules_relatively(api, shared_vm):
    exec_ok(api, shared_vm["id"], "mkdir -p lib && echo 'export const two = 2;' > lib/two.ts")
    body = _run(api, shared_vm, code="import { two } from './lib/two.ts';\nresult.set(two * 21)")
    assert body["exitCode"] == 0 and body["result"] == 42


def test_syntax_error_is_reported_not_a_crash(api, shared_vm):
    body = _run(api, shared_vm, code="const = ;")
    assert body["exitCode"] != 0 and "SyntaxError" in body["stderr"]
    assert body["error"]["name"] == "SyntaxError" and "Unexpected token" in body["error"]["message"]


def test_unhandled_rejection_fills_error(api, shared_vm):
    body = _run(api, shared_vm, code="Promise.reject(new Error('later'))")
    assert body["exitCode"] != 0 and body["error"]["message"] == "later"


def test_bigint_and_cycles_do_not_crash(api, shared_vm):
    body = _run(api, shared_vm, code="const o: any = {n: 12345678901234567890n}; o.self = o; "
                                      "result.set(o)")
    assert body["exitCode"] == 0
    assert body["result"] == {"n": "12345678901234567890", "self": "[Circular]"}


def test_permission_sandbox(api, shared_vm):
    body = _run(api, shared_vm, code="await Deno.readTextFile('/etc/passwd')")
    assert body["exitCode"] != 0 and body["error"]["name"] == "NotCapable"
    body = _run(api, shared_vm, code="await Deno.writeTextFile('/workspace/ts.txt', 'w'); "
                                      "result.set(await Deno.readTextFile('/workspace/ts.txt'))")
    assert body["result"] == "w"


@pytest.mark.parametrize("flags", [["-A"], ["--allow-all"], ["--allow-read=/"], ["-R"],
                                   ["--allow-run"], ["not-a-flag"],
                                   # clustered short flags / attached values: passed the old
                                   # blocklist and switched the permission sandbox off
                                   ["-qA"], ["-RW"], ["-R/"], ["-W/"], ["-Nhost"],
                                   ["-Pdefault"], ["-I"]])
def test_widening_deno_flags_are_400(api, shared_vm, flags):
    response = api.request("POST", f"/v1/vms/{shared_vm['id']}/run-ts",
                           json={"code": "await Deno.readTextFile('/etc/passwd')",
                                 "denoFlags": flags})
    assert response.status_code == 400 and flags[0] in response.json["message"]


@pytest.mark.parametrize("flags", [["--require=/workspace/x.cjs"], ["--import=./x.mjs"],
                                   ["-e"], ["--inspect"]])
def test_node_flags_outside_the_allowlist_are_400(api, shared_vm, flags):
    response = api.request("POST", f"/v1/vms/{shared_vm['id']}/run-js",
                           json={"code": "1", "nodeFlags": flags})
    assert response.status_code == 400 and flags[0] in response.json["message"]


@pytest.mark.parametrize("body", [{}, {"code": "1", "path": "a.ts"}, {"path": "/etc/x.ts"},
                                  {"code": "1", "env": ["NOEQUALS"]}])
def test_invalid_run_bodies_are_400(api, shared_vm, body):
    response = api.request("POST", f"/v1/vms/{shared_vm['id']}/run-ts", json=body)
    assert response.status_code == 400 and response.json["message"]


def test_path_and_args(api, shared_vm):
    exec_ok(api, shared_vm["id"], "mkdir -p scripts && printf '%s' "
            "'result.set({args: Deno.args, cwd: Deno.cwd()})' > scripts/echo.ts")
    body = _run(api, shared_vm, path="scripts/echo.ts", args=["a b", "--c"])
    assert body["result"] == {"args": ["a b", "--c"], "cwd": "/workspace"}


def test_timeout_and_temp_files_removed(api, shared_vm):
    body = _run(api, shared_vm, code="await new Promise(() => setInterval(() => {}, 1000))",
                timeoutMs=8000)
    assert body["timedOut"] is True and body["exitCode"] == -1
    # Nothing of the run is left: no program, request or import map in /run/rds-deno (only
    # files of an idle warm Deno, test_warm_deno), no Deno but that one.
    left = exec_ok(api, shared_vm["id"], "cd /run/rds-deno && ls; echo --; "
                                         "ps -eo args | grep '^deno' || true")
    files, _, processes = left["stdout"].partition("--\n")
    idle = {name[:-4] for name in files.split() if name.endswith(".pid")}
    assert all(name.startswith(tuple(f"{stem}." for stem in idle)) for name in files.split())
    assert not any(name.endswith(".claim") for name in files.split()), files
    assert len(processes.splitlines()) == len(idle) <= 1, processes


def test_run_js_result_env_and_require(api, shared_vm):
    code = ("const os = require('os');\n"
            "console.log('node', process.version.startsWith('v'));\n"
            "result.set({host: os.hostname(), greeting: process.env.GREETING, big: 10n})")
    body = _run(api, shared_vm, kind="js", code=code, env=["GREETING=hey"])
    assert body["exitCode"] == 0 and body["stdout"] == "node true\n"
    assert body["result"] == {"host": shared_vm["name"], "greeting": "hey", "big": "10"}


def test_run_js_error(api, shared_vm):
    body = _run(api, shared_vm, kind="js", code="throw new Error('js boom')")
    assert body["exitCode"] != 0 and body["error"]["message"] == "js boom"


def test_result_survives_stderr_over_the_cap(api, shared_vm):
    body = _run(api, shared_vm, code="console.error('x'.repeat(1_500_000)); result.set('kept')")
    assert body["stderrTruncated"] is True and body["result"] == "kept"


def test_the_programs_own_unload_listeners_run(api, shared_vm):
    body = _run(api, shared_vm, code="addEventListener('unload', () => console.log('bye'));\n"
                                     "console.log('hi'); result.set(1)")
    assert body["stdout"] == "hi\nbye\n" and body["result"] == 1 and body["exitCode"] == 0


def test_stderr_of_the_script_stays_visible(api, shared_vm):
    body = _run(api, shared_vm, code="console.error('warn: careful'); result.set(1)")
    assert body["stderr"] == "warn: careful\n" and body["result"] == 1


def test_identical_code_runs_concurrently(app, shared_vm):
    """Same code, same content-named file: every run still gets its own result."""
    import concurrent.futures

    from tests.integration.conftest import HEADERS

    def run(_index: int) -> dict:
        response = app.test_client().post(
            f"/v1/vms/{shared_vm['id']}/run-ts", headers=HEADERS,
            json={"code": "await new Promise((r) => setTimeout(r, 300)); result.set(Deno.args)",
                  "args": [str(_index)]})
        assert response.status_code == 200, response.json
        return response.json

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        bodies = list(pool.map(run, range(3)))
    assert [b["result"] for b in bodies] == [["0"], ["1"], ["2"]]
    assert all(b["exitCode"] == 0 for b in bodies)
