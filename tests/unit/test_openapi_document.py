"""The OpenAPI document generates real clients (issue 13): every operation is named, every
body and answer is described, and a generator takes the document without a warning.

The checks walk the whole document, so a route added later fails here until it is named and
described. Every answer the unit tests provoke is also checked against the document as it
happens (tests/unit/spec_check.py, installed by the ``app`` fixture).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import typing as t
import pytest

from app.schemas.fields import ENV_ENTRY
from tests.clientgen import generate_client
from tests.unit.spec_check import SpecChecker

CAMEL_CASE = re.compile(r"^[a-z][a-zA-Z0-9]*$")
# The names clients call; stable: renaming one breaks every generated client.
OPERATION_IDS = {
    ("/healthz", "get"): "getHealth",
    ("/auth/login", "post"): "login", ("/auth/logout", "post"): "logout",
    ("/auth/me", "get"): "getSession",
    ("/v1/vms", "get"): "listVms", ("/v1/vms", "post"): "createVm",
    ("/v1/vms", "delete"): "deleteVms",
    ("/v1/vms/{vm_id}", "get"): "getVm", ("/v1/vms/{vm_id}", "patch"): "updateVm",
    ("/v1/vms/{vm_id}", "delete"): "deleteVm",
    ("/v1/vms/{vm_id}/keepalive", "post"): "keepaliveVm",
    ("/v1/vms/{vm_id}/stop", "post"): "stopVm", ("/v1/vms/{vm_id}/start", "post"): "startVm",
    ("/v1/vms/{vm_id}/network", "put"): "setVmNetwork",
    ("/v1/vms/{vm_id}/exec", "post"): "execInVm",
    ("/v1/vms/{vm_id}/run-ts", "post"): "runTsInVm",
    ("/v1/vms/{vm_id}/run-js", "post"): "runJsInVm",
    ("/v1/vms/{vm_id}/files/upload", "post"): "uploadFiles",
    ("/v1/vms/{vm_id}/files/download", "get"): "downloadFiles",
    ("/v1/vms/{vm_id}/snapshots", "post"): "createSnapshot",
    ("/v1/snapshots", "get"): "listSnapshots",
    ("/v1/snapshots/{snapshot_id}", "get"): "getSnapshot",
    ("/v1/snapshots/{snapshot_id}", "delete"): "deleteSnapshot",
    ("/v1/images", "get"): "listImages", ("/v1/images", "post"): "createImage",
    ("/v1/images/{image_id}", "get"): "getImage",
    ("/v1/images/{image_id}", "delete"): "deleteImage",
    ("/v1/images/{image_id}/set-default", "post"): "setDefaultImage",
    ("/v1/images/{image_id}/files", "put"): "uploadImageFiles",
    ("/v1/images/{image_id}/disk", "put"): "uploadImageDisk",
    ("/v1/images/{image_id}/build-log", "get"): "getImageBuildLog",
    ("/v1/hosts", "get"): "listHosts", ("/v1/hosts/{name}", "get"): "getHost",
    ("/v1/hosts/{name}/images/{image_id}", "put"): "shipImage",
    ("/v1/admin/webhooks", "get"): "listWebhooks",
    ("/v1/admin/webhooks", "post"): "createWebhook",
    ("/v1/admin/webhooks/{webhook_id}", "get"): "getWebhook",
    ("/v1/admin/webhooks/{webhook_id}", "patch"): "updateWebhook",
    ("/v1/admin/webhooks/{webhook_id}", "delete"): "deleteWebhook",
    ("/v1/admin/webhooks/{webhook_id}/deliveries", "get"): "listWebhookDeliveries",
    ("/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", "post"):
        "redeliverWebhookDelivery",
}
# Answer fields the server leaves out in some answers (so not `required`), and when.
MAY_BE_ABSENT = {
    "ApiError": {"errors", "requestId"},  # validation failures (400) / unexpected errors (500)
    "RunResult": {"result", "error"},  # only when the script set them
    "RunResultLine": {"result", "error"},  # the same, streamed
    "OutputLine": {"encoding"},  # only on a chunk that is not UTF-8 (then "base64")
    # an event of the stream: the first carries only retry, the others all but retry
    "get /v1/admin/events 200": {"id", "event", "data", "retry"},
}
# Error statuses whose answer is not {"message"}: the health probe's 503 is its own report.
NOT_AN_ERROR_BODY = {("/healthz", "get", "503"), ("/readyz", "get", "503")}
ARCHIVE_TYPES = {"application/gzip", "application/x-gzip", "application/octet-stream"}
BINARY = {"type": "string", "format": "binary"}
IMPORT_ALL = ("import importlib, pkgutil, %s as p\n"
              "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
              "    importlib.import_module(m.name)")


@pytest.fixture
def document(client) -> dict[str, t.Any]:
    response = client.get("/swagger/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operations(document: dict) -> t.Iterator[tuple[str, str, dict]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, operation


def resolve(document: dict, node: dict) -> dict:
    return SpecChecker(document).resolve(node)


def test_every_operation_has_a_unique_camel_case_operation_id(document):
    named = {(path, method): operation.get("operationId")
             for path, method, operation in operations(document)}
    unnamed = [key for key, name in named.items() if not name]
    assert not unnamed, f"add @blp.doc(operationId=...) to {unnamed}"
    assert all(CAMEL_CASE.match(name) for name in named.values()), named
    assert len(set(named.values())) == len(named), "operationIds must be unique"


def test_the_operation_ids_clients_call_stay_the_same(document):
    named = {(path, method): operation.get("operationId")
             for path, method, operation in operations(document)}
    assert {key: named.get(key) for key in OPERATION_IDS} == OPERATION_IDS


def test_upload_documents_its_tar_gz_body(document):
    """One content type, the aliases in words: openapi-python-client 0.29 breaks on a body
    with several (app/api/openapi.py binary_body)."""
    body = document["paths"]["/v1/vms/{vm_id}/files/upload"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"] == {"application/gzip": {"schema": BINARY}}
    assert all(alias in body["description"] for alias in ARCHIVE_TYPES)


def test_download_documents_its_tar_gz_answer(document):
    ok = document["paths"]["/v1/vms/{vm_id}/files/download"]["get"]["responses"]["200"]
    assert ok["content"] == {"application/gzip": {"schema": BINARY}}


def test_every_error_answer_is_the_message_body(document):
    for path, method, operation in operations(document):
        for status, answer in operation["responses"].items():
            if (path, method, status) in NOT_AN_ERROR_BODY:
                continue
            if status == "default" or int(status) >= 400:
                content = resolve(document, answer)["content"]
                assert set(content) == {"application/json"}, (path, method, status)
                schema = resolve(document, content["application/json"]["schema"])
                assert "message" in schema["required"], (path, method, status)
                assert schema["properties"]["message"]["type"] == "string"


def answer_schemas(document: dict) -> dict[str, dict]:
    """Every object schema a successful answer can hold, named by where it was found."""
    found: dict[str, dict] = {}

    def walk(schema: dict, name: str) -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name in found:
                return
            schema = resolve(document, schema)
        if schema.get("properties"):
            found[name] = schema
            for field, inner in schema["properties"].items():
                walk(inner, f"{name}.{field}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                walk(schema[key], name)
        for option in schema.get("oneOf", []) + schema.get("anyOf", []):
            walk(option, name)

    for path, method, operation in operations(document):
        for status, answer in operation["responses"].items():
            for media in resolve(document, answer).get("content", {}).values():
                walk(media.get("schema", {}), f"{method} {path} {status}")
    return found


def test_answer_schemas_mark_what_is_always_sent_as_required(document):
    """A field missing from ``required`` is Optional/Unset in every generated client; only the
    fields in MAY_BE_ABSENT are really left out of some answers. (Whether a ``required`` field
    is really always sent, and null only where ``nullable``, the answers of every unit test
    show: spec_check.py.)"""
    schemas = answer_schemas(document)
    assert {"Vm", "CommandResult", "RunResult", "Snapshot", "Health", "ApiError"} <= set(schemas)
    for name, schema in schemas.items():
        optional = set(schema["properties"]) - set(schema.get("required", ()))
        assert optional <= MAY_BE_ABSENT.get(name, set()), (
            f"{name}: mark {sorted(optional)} required=True (or list them in MAY_BE_ABSENT "
            f"with the reason they are sometimes left out)")


def test_vm_fields_that_can_be_null_say_so(document):
    vm = document["components"]["schemas"]["Vm"]["properties"]
    assert vm["snapshotId"]["nullable"] is True
    health = document["components"]["schemas"]["Health"]["properties"]
    assert all(health[name]["nullable"] for name in ("libvirtVersion", "network",
                                                     "networkPolicy"))


@pytest.mark.parametrize("schema", ["Exec", "RunTs", "RunJs"])
def test_env_is_documented_as_object_or_list(document, schema):
    """One named schema for the object form: one type in a generated client."""
    env = document["components"]["schemas"][schema]["properties"]["env"]
    assert env["oneOf"] == [{"$ref": "#/components/schemas/EnvMap"},
                            {"type": "array", "items": ENV_ENTRY, "maxItems": 256}]
    assert document["components"]["schemas"]["EnvMap"]["additionalProperties"]["type"] == \
        "string"


def test_the_answer_check_sees_a_missing_field_and_an_undeclared_null(document):
    checker = SpecChecker(document)
    vm = {"$ref": "#/components/schemas/Vm"}
    assert checker.validate(vm, {}, "$")
    problems = checker.validate({"$ref": "#/components/schemas/Health"}, {
        "status": "ok", "libvirt": None, "libvirtVersion": None, "network": None,
        "networkPolicy": None, "accelerator": "tcg"}, "$")
    assert problems == ["$.libvirt is null; not nullable"]
    env = document["components"]["schemas"]["Exec"]["properties"]["env"]
    assert not checker.validate(env, {"A": "1"}, "$") and not checker.validate(env, ["A=1"], "$")
    assert checker.validate(env, "A=1", "$")


def test_openapi_python_client_generates_without_a_warning(document, tmp_path):
    """The generator docs/api.md names takes the document as it is, and every module of the
    client it writes imports (test_generated_client.py, an integration test, then drives a
    VM with it)."""
    pytest.importorskip("openapi_python_client")
    package = generate_client(json.dumps(document).encode(), tmp_path)
    modules = {path.stem for path in (package / "api").glob("*/*.py")} - {"__init__"}
    assert {"create_vm", "exec_in_vm", "upload_files", "download_files"} <= modules
    imported = subprocess.run([sys.executable, "-c", IMPORT_ALL % package.name],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=False)
    assert imported.returncode == 0, imported.stderr
