"""What schemathesis found (issue 16; RELIABILITY.md, "API fuzzing"), one test per fix: each
either a server answer that broke the OpenAPI document, or a document that did not say what
the server takes."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app.schemas.addresses import IP_OR_CIDR
from app.schemas.fields import ENV_ENTRY

NO_VM = "00000000-0000-4000-8000-00000000dead"


@pytest.fixture
def document(client) -> dict:
    return client.get("/openapi.json").get_json()


def schema_of(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("TRACE", "/v1/vms", {"GET", "POST", "DELETE"}),
    ("PUT", "/v1/vms/x/exec", {"POST"}),
    ("DELETE", "/healthz", {"GET"}),
    ("PATCH", "/auth/login", {"POST"}),
])
def test_405_names_the_allowed_methods(client, auth, method, path, allowed):
    """RFC 9110 15.5.6: 17 routes answered 405 without Allow."""
    response = client.open(path, method=method, headers=auth)
    assert response.status_code == 405
    assert allowed <= {part.strip() for part in response.headers["Allow"].split(",")}
    assert response.get_json()["message"]


@pytest.mark.parametrize("query", ["/v1/admin/activity?before=306873805708640353517568",
                                   "/v1/admin/events?after=349496058140931519414272"])
def test_a_seq_beyond_sqlite_integers_is_400(client, auth, query):
    """?before=10**23 was a 500 (the SQLite driver's OverflowError); ?after= broke the
    stream after its 200."""
    response = client.get(query, headers=auth)
    assert response.status_code == 400, response.text
    assert "message" in response.get_json()


def test_network_without_a_body_is_400(client, auth, world, document):
    """PUT .../network without a body reset the VM's egress policy (200); the document
    always said the body is required."""
    vm = world.add_vm(1)
    assert client.put(f"/v1/vms/{vm.id}/network", headers=auth,
                      json={"allowIps": ["10.0.0.1"], "outboundInternet": True}).status_code == 200
    for extra in ({}, {"data": b"", "content_type": "application/json"},
                  {"data": b"{}", "content_type": "text/plain"}):
        response = client.put(f"/v1/vms/{vm.id}/network", headers=auth, **extra)
        assert response.status_code == 400, (extra, response.text)
        assert response.get_json()["message"] == "a JSON body is required"
    assert client.get(f"/v1/vms/{vm.id}", headers=auth).get_json()["allowIps"] == \
        ["10.0.0.1/32"]
    put = document["paths"]["/v1/vms/{vm_id}/network"]["put"]
    assert put["requestBody"]["required"] is True


def test_keepalive_body_is_documented_optional(client, auth, world, document):
    """It is: no body renews by the VM's own ttlSeconds."""
    vm = world.add_vm(1)
    assert client.post(f"/v1/vms/{vm.id}/keepalive", headers=auth).status_code == 200
    post = document["paths"]["/v1/vms/{vm_id}/keepalive"]["post"]
    assert post["requestBody"]["required"] is False


@pytest.mark.parametrize("entry", ["10.0.0.0/255.0.0.0", "10.0.0.0/0.255.255.255",
                                   "\n10.0.0.1", "10.0.0.1\n", "\u200310.0.0.1"])
def test_allow_ips_the_pattern_refuses_are_400(client, auth, world, entry):
    """ip_network() took netmask forms and any Unicode space around: the pattern did not."""
    assert not re.search(IP_OR_CIDR, entry)
    vm = world.add_vm(1)
    response = client.put(f"/v1/vms/{vm.id}/network", headers=auth,
                          json={"allowIps": [entry]})
    assert response.status_code == 400, response.text


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=st.from_regex(IP_OR_CIDR))
def test_allow_ips_the_pattern_allows_are_taken(client, auth, world, entry):
    vm = world.vms.list()[0].id if world.vms.list() else world.add_vm(1).id
    response = client.put(f"/v1/vms/{vm}/network", headers=auth, json={"allowIps": [entry]})
    assert response.status_code == 200, (entry, response.text)


@pytest.mark.parametrize("path", ["network", "create", "image"])
def test_allow_ips_counts_every_entry_given_duplicates_too(client, auth, world, path):
    """The document's maxItems (MAX_ALLOW_IPS, 64) counts the entries as sent: 70 copies of one
    address were taken (deduplicated to one, under the limit) by PUT .../network
    (schemathesis, session 9); 64 copies still are."""
    def send(count: int):
        entries = ["2001:db8::1"] * count
        if path == "network":
            vm = world.add_vm(1)
            return client.put(f"/v1/vms/{vm.id}/network", headers=auth,
                              json={"allowIps": entries})
        if path == "create":
            return client.post("/v1/vms", headers=auth,
                               json={"cpu": 1, "memMb": 256, "allowIps": entries})
        return client.post("/v1/images", headers=auth,
                           json={"name": "dup-ips", "setup": "true", "allowIps": entries})

    refused = send(65)
    assert refused.status_code == 400, refused.text
    assert "allowIps has 65 entries; at most 64" in refused.get_json()["message"]
    taken = send(64)
    assert taken.status_code in (200, 201, 202), taken.text
    if path != "image":
        assert taken.get_json()["allowIps"] == ["2001:db8::1/128"]


def test_the_document_carries_the_allow_ips_pattern(document):
    for name in ("NetworkPolicy", "VmCreate", "ImageCreate"):
        allow_ips = schema_of(document, name)["properties"]["allowIps"]
        assert allow_ips["items"]["pattern"] == IP_OR_CIDR
        assert allow_ips["maxItems"] == 64  # MAX_ALLOW_IPS


@pytest.mark.parametrize("value", [0, 1, "true", "yes"])
def test_booleans_in_bodies_are_true_or_false_only(client, auth, world, value):
    """outboundInternet: 0 was taken (marshmallow's Boolean) where the document says
    boolean."""
    vm = world.add_vm(1)
    response = client.put(f"/v1/vms/{vm.id}/network", headers=auth,
                          json={"outboundInternet": value})
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("schema", ["Exec", "RunTs", "RunJs"])
def test_timeout_ms_bounds_are_documented(document, services, schema):
    """timeoutMs: 0 was valid per the document and a 400 from the server."""
    timeout = schema_of(document, schema)["properties"]["timeoutMs"]
    assert timeout["minimum"] == 1
    assert timeout["maximum"] == services.settings.max_exec_timeout_ms


def test_timeout_ms_zero_is_400(client, auth, world):
    vm = world.add_vm(1)
    response = client.post(f"/v1/vms/{vm.id}/exec", headers=auth,
                           json={"cmd": "true", "timeoutMs": 0})
    assert response.status_code == 400


def test_create_limits_are_this_hosts(document, services):
    properties = schema_of(document, "VmCreate")["properties"]
    assert properties["cpu"]["maximum"] == services.settings.max_cpu
    assert properties["memMb"]["maximum"] == services.settings.max_mem_mb
    assert properties["diskSizeMb"]["maximum"] == services.settings.max_disk_size_mb


@pytest.mark.parametrize("label", ["", "=x"])
def test_label_filters_without_a_key_are_documented_invalid(client, auth, document, label):
    parameter, = [p for p in document["paths"]["/v1/vms"]["get"]["parameters"]
                  if p["name"] == "label"]
    assert not re.search(parameter["schema"]["items"]["pattern"], label)
    assert client.get("/v1/vms", query_string={"label": label}, headers=auth).status_code == 400


def test_label_values_are_documented(document):
    labels = schema_of(document, "VmPatch")["properties"]["labels"]
    assert labels["maxProperties"] == 32
    value = labels["additionalProperties"]
    assert value["maxLength"] == 256
    assert not re.search(value["pattern"], "a\u0085b")
    assert not re.search(value["pattern"], "a\n")
    assert re.search(value["pattern"], "ci job #42")


def test_api_key_scopes_are_documented_unique(client, auth, document):
    scopes = schema_of(document, "ApiKeyCreate")["properties"]["scopes"]
    assert scopes["uniqueItems"] is True
    response = client.post("/v1/admin/api-keys", headers=auth,
                           json={"name": "k", "scopes": ["vms", "vms"]})
    assert response.status_code == 400


def test_webhook_urls_are_documented_http(document):
    url = schema_of(document, "WebhookCreate")["properties"]["url"]
    assert re.search(url["pattern"], "HTTPS://example.test/x")
    assert not re.search(url["pattern"], "ftp://example.test/")


@pytest.mark.parametrize(("entry", "valid"), [
    ("A=1", True), ("_x=", True), ("A==", True), ("=1", False), ("1A=x", False),
    ("A", False), ("A=\0", False)])
def test_env_list_entries_follow_their_pattern(client, auth, world, entry, valid):
    assert bool(re.search(ENV_ENTRY["pattern"], entry)) is valid
    vm = world.add_vm(1)
    response = client.post(f"/v1/vms/{vm.id}/exec", headers=auth,
                           json={"cmd": "true", "env": [entry]})
    assert (response.status_code != 400) is valid, response.text


def test_the_event_stream_documents_each_event(document):
    """The stream's schema was {"type": "string"}: schemathesis validates each event (id,
    event, data, retry) against it."""
    stream = document["paths"]["/v1/admin/events"]["get"]["responses"]["200"]
    schema = stream["content"]["text/event-stream"]["schema"]
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"id", "event", "data", "retry"}


def test_a_vm_of_an_image_that_is_not_ready_is_a_documented_409(client, auth, document):
    """The live fuzz run's explicit-status check: POST /v1/vms with an image still building
    (or failed) answers 409, which only the ``default`` response covered."""
    assert client.post("/v1/images", headers=auth, json={
        "name": "node", "setup": "true"}).status_code == 202
    response = client.post("/v1/vms", json={"cpu": 1, "memMb": 256, "imageId": "node"},
                           headers=auth)
    assert response.status_code == 409
    assert "409" in document["paths"]["/v1/vms"]["post"]["responses"]
