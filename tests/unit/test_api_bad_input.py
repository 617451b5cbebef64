"""Bad input is a 400 with a message, never a 500 or a dropped guest connection.

Lone surrogates, deep nesting, huge numbers and NaN are refused when the JSON body is read
(app.api.jsonbody); NUL is refused in every field that reaches a guest's command line
(app.schemas.fields.NulFreeString).
"""
from __future__ import annotations

import json

import pytest
from werkzeug.exceptions import BadRequest

from app.api.jsonbody import MAX_DEPTH, InvalidJson, load_document
from app.models import VmSpec

SURROGATE = "\ud800"
VM_BODY = {"cpu": 1, "memMb": 256}


@pytest.fixture
def vm_id(services) -> str:
    """A RUNNING VM (on fakes); its guest has seen no command since the readiness probe."""
    vm = services.vms.create(VmSpec(cpu=1, mem_mb=256))
    services.vms.guest(vm.id).commands.clear()
    return vm.id


def post_raw(client, path: str, text: str, auth: dict[str, str] | None = None):
    """POST, or PUT / PATCH for the routes that take a body on those."""
    method = (client.put if path.endswith("/network") else
              client.patch if path.rstrip("/").rsplit("/", 2)[-2] == "vms" else client.post)
    return method(path, data=text, content_type="application/json", headers=auth or {})


def assert_400(response, *words: str) -> str:
    assert response.status_code == 400, response.text
    message = response.get_json()["message"]
    for word in words:
        assert word in message, message
    return message


# Each JSON route with a valid body, and where in it a string may be hostile.
ROUTES = [
    ("/auth/login", {"email": "a@b.c", "password": "pw"}, ["email", "password"]),
    ("/v1/vms", {**VM_BODY, "imageId": "default", "allowIps": ["1.1.1.1"]},
     ["imageId", "allowIps.0"]),
    ("/v1/vms/{vm}/network", {"allowIps": ["1.1.1.1"]}, ["allowIps.0"]),
    ("/v1/vms/{vm}", {"labels": {"job": "42"}}, ["labels.job"]),
    ("/v1/vms/{vm}/keepalive", {"ttlSeconds": 60}, []),
    ("/v1/vms/{vm}/exec", {"cmd": "true", "cwd": "/workspace", "env": {"A": "b"}},
     ["cmd", "cwd", "env.A"]),
    ("/v1/vms/{vm}/run-ts", {"code": "1", "args": ["a"], "env": ["A=b"], "denoFlags": ["--x"]},
     ["code", "args.0", "env.0", "denoFlags.0"]),
    ("/v1/vms/{vm}/run-js", {"code": "1", "args": ["a"], "env": ["A=b"], "nodeFlags": ["--x"]},
     ["code", "args.0", "env.0", "nodeFlags.0"]),
    ("/v1/images", {"name": "img", "from": "default", "setup": "true", "description": "d",
                    "allowIps": ["1.1.1.1"]},
     ["name", "from", "setup", "description", "allowIps.0"]),
    ("/v1/admin/api-keys", {"name": "ci", "scopes": ["vms"], "expiresAt": "2999-01-01T00:00Z"},
     ["name", "scopes.0", "expiresAt"]),
]


def with_value(body: dict, dotted: str, value: str) -> dict:
    """A copy of ``body`` with ``value`` put into the string at ``dotted`` (``env.A``)."""
    body = json.loads(json.dumps(body))
    *parents, last = dotted.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] += value
    else:
        node[last] += value
    return body


def json_text(body: dict) -> str:
    return json.dumps(body)  # ensure_ascii: a lone surrogate becomes the escape "\ud800"


CASES = [(path, body, field) for path, body, fields in ROUTES for field in fields]
ROUTE_IDS = [path for path, _body, _fields in ROUTES]


@pytest.mark.parametrize(("path", "body", "field"), CASES)
def test_lone_surrogate_in_any_string_field_is_400(client, auth, vm_id, path, body, field):
    response = post_raw(client, path.format(vm=vm_id),
                        json_text(with_value(body, field, SURROGATE)), auth)
    assert_400(response, "Invalid JSON", "surrogate", "$." + field.split(".")[0])


@pytest.mark.parametrize("path", ["/auth/login", "/v1/vms", "/v1/vms/{vm}/exec"])
def test_lone_surrogate_in_a_key_is_400(client, auth, vm_id, path):
    response = post_raw(client, path.format(vm=vm_id), json_text({SURROGATE: 1}), auth)
    assert_400(response, "Invalid JSON", "key")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 2_000, 200_000])
@pytest.mark.parametrize("path", ROUTE_IDS)
def test_deeply_nested_json_is_400(client, auth, vm_id, path, depth):
    response = post_raw(client, path.format(vm=vm_id), "[" * depth + "]" * depth, auth)
    assert_400(response, "Invalid JSON", "nested")


@pytest.mark.parametrize(("text", "words"), [
    ('{"cpu": 1%s, "memMb": 256}' % ("0" * 5000), ["Invalid JSON", "digits"]),
    ('{"cpu": NaN, "memMb": 256}', ["Invalid JSON", "NaN"]),
    ('{"cpu": 1, "memMb": -Infinity}', ["Invalid JSON", "Infinity"]),
    ('{"cpu": 1, "memMb": 256', ["Invalid JSON", "line 1"]),
])
def test_numbers_python_will_not_hold_are_400(client, auth, text, words):
    assert_400(post_raw(client, "/v1/vms", text, auth), *words)


def test_invalid_utf8_body_is_400(client, auth):
    response = client.post("/v1/vms", data=b'{"imageId": "\xed\xa0\x80"}', headers=auth,
                           content_type="application/json")
    assert_400(response, "Invalid JSON", "UTF-8")


def test_nesting_within_the_limit_is_read():
    assert load_document("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(InvalidJson):
        load_document("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert load_document('{"a": ["\\u00e9\\ud83d\\ude00"]}') == {"a": ["é\U0001F600"]}


def test_flask_get_json_uses_the_same_loader(app):
    with app.test_request_context("/", method="POST", data='["\\ud800"]',
                                  content_type="application/json"):
        from flask import request
        with pytest.raises(BadRequest):
            request.get_json()


# NUL ######################################################################################

NUL_CASES = [
    ("exec", {"cmd": "echo a\0b"}, "cmd"),
    ("exec", {"cmd": "true", "cwd": "/workspace/a\0"}, "cwd"),
    ("exec", {"cmd": "true", "env": {"A\0B": "x"}}, "env"),
    ("exec", {"cmd": "true", "env": {"A": "x\0y"}}, "env"),
    ("run-ts", {"code": "1", "args": ["ok", "a\0"]}, "args"),
    ("run-ts", {"code": "1", "env": ["A=x\0y"]}, "env"),
    ("run-ts", {"code": "1", "denoFlags": ["--unstable\0"]}, "denoFlags"),
    ("run-ts", {"path": "main\0.ts"}, "path"),
    ("run-js", {"code": "1", "args": ["\0"]}, "args"),
    ("run-js", {"code": "1", "nodeFlags": ["--x\0"]}, "nodeFlags"),
]


@pytest.mark.parametrize(("route", "body", "field"), NUL_CASES)
def test_nul_on_the_command_line_is_400_and_never_reaches_the_guest(
        client, auth, services, vm_id, route, body, field):
    response = client.post(f"/v1/vms/{vm_id}/{route}", json=body, headers=auth)
    assert_400(response, field, "NUL")
    assert services.vms.guest(vm_id).commands == []


@pytest.mark.parametrize("route", ["run-ts", "run-js"])
def test_nul_in_code_is_sent_on_stdin(client, auth, services, vm_id, route):
    response = client.post(f"/v1/vms/{vm_id}/{route}", json={"code": "'a\0b'"}, headers=auth)
    assert response.status_code == 200
    assert len(services.vms.guest(vm_id).commands) == 1


def test_command_line_over_the_guest_limit_is_400(client, auth, services, vm_id):
    response = client.post(f"/v1/vms/{vm_id}/run-ts",
                           json={"code": "1", "args": ["x" * 70_000]}, headers=auth)
    assert_400(response, "command line", "bytes")
    response = client.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "é" * 99_000}, headers=auth)
    assert_400(response, "command line")
    assert services.vms.guest(vm_id).commands == []


# Query strings and path parameters ########################################################

@pytest.mark.parametrize("query", [
    "dest=%00", "dest=a%00b", "dest=%ED%A0%80", "dest=%FF%FE", "dest=" + "a" * 200_000,
    "dest=%0A", "dest=", "dest=/etc", "dest=a&dest=b"])
def test_upload_query_values_never_500(client, auth, vm_id, query):
    response = client.post(f"/v1/vms/{vm_id}/files/upload?{query}", data=b"",
                           headers={**auth, "Content-Type": "application/gzip"})
    assert_400(response)


@pytest.mark.parametrize(("query", "status"), [
    ("path=%00", 400), ("path=%ED%A0%80", 404), ("path=" + "b" * 200_000, 400),
    ("path=a%0Db", 400), ("path=../x", 400)])
def test_download_query_values_never_500(client, auth, vm_id, query, status):
    response = client.get(f"/v1/vms/{vm_id}/files/download?{query}", headers=auth)
    assert response.status_code == status, response.text
    assert response.get_json()["message"]


@pytest.mark.parametrize("vm", ["%00", "%ED%A0%80", "%FF", "x" * 100_000, "%0A", "..%2F.."])
@pytest.mark.parametrize(("method", "suffix"), [
    ("get", ""), ("delete", ""), ("post", "/stop"), ("post", "/exec"), ("post", "/snapshots"),
    ("get", "/files/download?path=a")])
def test_odd_vm_ids_are_404(client, auth, vm, method, suffix):
    response = getattr(client, method)(f"/v1/vms/{vm}{suffix}", headers=auth,
                                       json={"cmd": "true"} if suffix == "/exec" else None)
    assert response.status_code == 404, response.text
    assert response.get_json()["message"]
