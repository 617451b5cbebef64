"""Exec history (GET /v1/vms/{id}/exec-logs) on the real services over fakes: what is
recorded for buffered and streamed calls, order, filters, retention, who ran it, removal with
the VM, the age prune, and that a broken store never fails a call."""
from __future__ import annotations

import re
import time

import pytest

from app.errors import StoreUnavailable
from app.models import VmSpec
from app.services.exec_history import PREVIEW_BYTES
from tests.unit.fakes import CSRF, World


@pytest.fixture
def vm_id(services) -> str:
    return services.vms.create(VmSpec(cpu=1, mem_mb=256)).id


def logs(client, auth, vm_id: str, query: str = "") -> list[dict]:
    response = client.get(f"/v1/vms/{vm_id}/exec-logs{query}", headers=auth)
    assert response.status_code == 200, response.text
    return response.get_json()


def run(client, auth, vm_id: str, route: str, body: dict, **headers) -> None:
    response = client.post(f"/v1/vms/{vm_id}/{route}", json=body,
                           headers={**auth, **headers})
    assert response.status_code == 200, response.text
    response.get_data()
    response.close()


def test_calls_are_listed_newest_first_with_what_ran(client, auth, services, vm_id):
    guest = services.vms.guest(vm_id)
    guest.scripts = [{"steps": [("stdout", b"hello\n"), ("stderr", b"warn\n")],
                      "exit_code": 3}]
    run(client, auth, vm_id, "exec", {"cmd": "echo hello; exit 3"})
    run(client, auth, vm_id, "run-ts", {"code": "console.log(1)"})
    run(client, auth, vm_id, "run-js", {"path": "/workspace/main.mjs"})
    entries = logs(client, auth, vm_id)
    assert [entry["type"] for entry in entries] == ["run-js", "run-ts", "exec"]
    exec_entry = entries[-1]
    assert exec_entry["command"] == "echo hello; exit 3"
    assert (exec_entry["exitCode"], exec_entry["timedOut"]) == (3, False)
    assert (exec_entry["stdoutPreview"], exec_entry["stderrPreview"]) == ("hello\n", "warn\n")
    assert exec_entry["actor"] == "api-key"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", exec_entry["startedAt"])
    assert isinstance(exec_entry["durationMs"], int)
    assert entries[1]["command"] == "console.log(1)"
    assert entries[0]["command"] == "path: /workspace/main.mjs"
    assert len({entry["id"] for entry in entries}) == 3


def test_streamed_calls_are_recorded_too(client, auth, services, vm_id):
    services.vms.guest(vm_id).scripts = [{"steps": [("stdout", b"streamed\n")]}]
    run(client, auth, vm_id, "exec", {"cmd": "echo streamed"},
        Accept="application/x-ndjson")
    entry, = logs(client, auth, vm_id)
    assert (entry["command"], entry["stdoutPreview"]) == ("echo streamed", "streamed\n")


def test_filters_and_limit(client, auth, vm_id):
    for number in range(3):
        run(client, auth, vm_id, "exec", {"cmd": f"echo {number}"})
    run(client, auth, vm_id, "run-ts", {"code": "1"})
    assert [entry["command"] for entry in logs(client, auth, vm_id, "?type=exec&limit=2")] \
        == ["echo 2", "echo 1"]
    assert [entry["type"] for entry in logs(client, auth, vm_id, "?type=run-ts")] == ["run-ts"]


def test_previews_are_the_first_4_kib_and_survive_binary(client, auth, services, vm_id):
    services.vms.guest(vm_id).scripts = [{"steps": [("stdout", b"\xff" + b"a" * 10_000)]}]
    run(client, auth, vm_id, "exec", {"cmd": "x" * 10_000})
    entry, = logs(client, auth, vm_id)
    assert entry["stdoutPreview"].startswith("\ufffd")
    assert len(entry["stdoutPreview"].encode()) <= PREVIEW_BYTES + 2
    assert len(entry["command"]) == PREVIEW_BYTES


def test_only_the_last_calls_of_a_vm_are_kept(tmp_path, monkeypatch, auth):
    from app import create_app
    world = World(tmp_path, monkeypatch, EXEC_LOG_PER_VM=3)
    client = create_app({"TESTING": True}, services=world.services).test_client()
    vm_id = world.vms.create(VmSpec(cpu=1, mem_mb=256)).id
    for number in range(5):
        run(client, auth, vm_id, "exec", {"cmd": f"echo {number}"})
    assert [entry["command"] for entry in logs(client, auth, vm_id, "?limit=500")] == [
        "echo 4", "echo 3", "echo 2"]
    world.services.close()


def test_a_vms_history_goes_with_it(client, auth, services, vm_id):
    run(client, auth, vm_id, "exec", {"cmd": "true"})
    other = services.vms.create(VmSpec(cpu=1, mem_mb=256)).id
    run(client, auth, other, "exec", {"cmd": "true"})
    assert client.delete(f"/v1/vms/{vm_id}", headers=auth).status_code == 204
    assert services.history.list(vm_id, 10) == []
    assert len(services.history.list(other, 10)) == 1


def test_the_prune_drops_old_rows_and_rows_of_vms_that_are_gone(services, vm_id):
    from app.models import CommandResult
    result = CommandResult(exit_code=0, stdout=b"", stderr=b"")
    services.history.record(vm_id, "exec", "new", result, "2026-01-01T00:00:00.000Z", "x")
    services.history.record("00000000-0000-4000-8000-00000000dead", "exec", "orphan", result,
                            "2026-01-01T00:00:00.000Z", "x")
    with services.history.store.transaction() as conn:
        conn.execute("UPDATE exec_history SET recorded_at = ? WHERE command = 'new'",
                     (time.time() - services.settings.exec_log_max_age_s - 1,))
    services.history.record(vm_id, "exec", "fresh", result, "2026-01-01T00:00:00.000Z", "x")
    assert services.history.prune({vm_id}) == 2
    assert [entry.command for entry in services.history.list(vm_id, 10)] == ["fresh"]


def test_a_broken_store_never_fails_the_call(client, auth, services, vm_id, monkeypatch,
                                             caplog):
    def broken(*_args, **_kwargs):
        raise StoreUnavailable("state database unavailable: disk I/O error")

    monkeypatch.setattr(services.history.store, "transaction", broken)
    response = client.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"}, headers=auth)
    assert response.status_code == 200 and response.get_json()["exitCode"] == 0
    assert "exec history not recorded" in caplog.text
    # Reading it is what fails then, with a clear 503.
    failed = client.get(f"/v1/vms/{vm_id}/exec-logs", headers=auth)
    assert failed.status_code == 503 and "state database" in failed.get_json()["message"]


def test_an_admin_session_is_named(client, services, vm_id, session):
    assert session.login().status_code == 200
    response = client.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"}, headers=CSRF)
    assert response.status_code == 200, response.text
    entry, = client.get(f"/v1/vms/{vm_id}/exec-logs").get_json()
    assert entry["actor"] == f"session:{services.settings.admin_email}"


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?limit=x", "?type=shell",
                                   "?type=%00"])
def test_bad_queries_are_400(client, auth, vm_id, query):
    response = client.get(f"/v1/vms/{vm_id}/exec-logs{query}", headers=auth)
    assert response.status_code == 400 and "message" in response.get_json()


def test_unknown_vm_is_404(client, auth):
    response = client.get("/v1/vms/00000000-0000-4000-8000-00000000abcd/exec-logs",
                          headers=auth)
    assert response.status_code == 404
