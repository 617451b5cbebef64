"""``env`` on exec, run-ts and run-js: an object ``{"K": "V"}`` or a list ``["K=V"]`` on each
of the three (the original service took the first on exec and the second on run-ts/run-js),
with the same rules whatever the form (app.schemas.fields.EnvVars)."""
from __future__ import annotations

import re

import pytest

from app.models import VmSpec
from app.schemas.fields import MAX_ENV_ENTRIES, MAX_ENV_NAME, MAX_ENV_VALUE

BODIES = {"exec": {"cmd": "true"}, "run-ts": {"code": "1"}, "run-js": {"code": "1"}}
ROUTES = list(BODIES)


@pytest.fixture
def vm_id(services) -> str:
    """A RUNNING VM (on fakes) whose guest has seen no command yet."""
    vm = services.vms.create(VmSpec(cpu=1, mem_mb=256))
    services.vms.guest(vm.id).commands.clear()
    services.vms.guest(vm.id).environments.clear()
    return vm.id


def run(client, auth, vm_id: str, route: str, env):
    return client.post(f"/v1/vms/{vm_id}/{route}", json={**BODIES[route], "env": env},
                       headers=auth)


def exported(services, vm_id: str) -> str | None:
    """The ``export`` line of the one command the guest got (None: it has none)."""
    [command] = services.vms.guest(vm_id).commands
    return next((line for line in command.splitlines() if line.startswith("export ")), None)


def marker_sent(services, vm_id: str) -> str:
    """The marker the one command got as an SSH env request (and in its line's comment)."""
    guest = services.vms.guest(vm_id)
    [environment], [command] = guest.environments, guest.commands
    assert list(environment) == ["RDS_EXEC_ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", environment["RDS_EXEC_ID"])
    assert command.splitlines()[0] == f"# RDS_EXEC_ID={environment['RDS_EXEC_ID']}"
    return environment["RDS_EXEC_ID"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("env", [{"A": "1", "B": "x y", "C": "k=v"},
                                 ["A=1", "B=x y", "C=k=v"]], ids=["object", "list"])
def test_both_forms_set_the_same_variables(client, auth, services, vm_id, route, env):
    response = run(client, auth, vm_id, route, env)
    assert response.status_code == 200, response.get_json()
    assert exported(services, vm_id) == "export A=1 'B=x y' C=k=v"
    assert marker_sent(services, vm_id)


@pytest.mark.parametrize("route", ROUTES)
def test_a_later_list_entry_wins(client, auth, services, vm_id, route):
    assert run(client, auth, vm_id, route, ["A=1", "A=2", "B="]).status_code == 200
    assert exported(services, vm_id) == "export A=2 B="


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("env", [{}, []], ids=["object", "list"])
def test_an_empty_env_sets_nothing(client, auth, services, vm_id, route, env):
    assert run(client, auth, vm_id, route, env).status_code == 200
    assert exported(services, vm_id) is None  # no line for nothing: it costs the guest
    assert marker_sent(services, vm_id)


# (object form, list form, words the 400's message holds)
BAD = [
    ({"A=B": "x"}, ["=x"], ["env", "'='"]),
    ({"": "x"}, ["=x"], ["env", "1.."]),
    ({"A\0B": "x"}, ["A\0B=x"], ["env", "NUL"]),
    ({"A": "x\0y"}, ["A=x\0y"], ["env", "NUL"]),
    ({"A" * (MAX_ENV_NAME + 1): "x"}, ["A" * (MAX_ENV_NAME + 1) + "=x"], ["env", "characters"]),
    ({"A": "x" * (MAX_ENV_VALUE + 1)}, ["A=" + "x" * (MAX_ENV_VALUE + 1)], ["env", "longer"]),
    ({f"A{i}": "x" for i in range(MAX_ENV_ENTRIES + 1)},
     [f"A{i}=x" for i in range(MAX_ENV_ENTRIES + 1)], ["env", "at most"]),
    ({"A": 1}, [1], ["env", "not a string"]),
    ({"A": None}, [None], ["env", "not a string"]),
    ({"1A": "x"}, ["1A=x"], ["not a valid variable name"]),
    ({"RDS_EXEC_ID": "x"}, ["RDS_EXEC_ID=x"], ["not a valid variable name"]),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("form", "index"), [("object", 0), ("list", 1)])
@pytest.mark.parametrize("case", BAD, ids=[str(index) for index in range(len(BAD))])
def test_the_same_rules_hold_in_both_forms(client, auth, services, vm_id, route, form, index,
                                           case):
    response = run(client, auth, vm_id, route, case[index])
    assert response.status_code == 400, response.get_json()
    message = response.get_json()["message"]
    assert all(word in message for word in case[2]), message
    assert services.vms.guest(vm_id).commands == []


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("env", ["A=1", 1, True, ["A"], [["A=1"]]])
def test_anything_else_is_400(client, auth, services, vm_id, route, env):
    response = run(client, auth, vm_id, route, env)
    assert response.status_code == 400, response.get_json()
    assert "env" in response.get_json()["message"]
    assert services.vms.guest(vm_id).commands == []
