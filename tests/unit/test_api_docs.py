"""Public routes: health probe, Swagger UI and the OpenAPI document."""
from __future__ import annotations

import json

import pytest

from app.api.auth import required_scope
from app.errors import HypervisorError

# The error responses each /v1 operation must document, besides 401.
DOCUMENTED_ERRORS = {
    ("/v1/vms", "get"): {"400", "503"},
    ("/v1/vms", "post"): {"400", "404", "409", "429", "503", "504"},
    ("/v1/vms", "delete"): {"400", "503"},
    ("/v1/vms/{vm_id}", "get"): {"404"},
    ("/v1/vms/{vm_id}", "patch"): {"400", "404"},
    ("/v1/vms/{vm_id}", "delete"): {"404"},
    ("/v1/vms/{vm_id}/keepalive", "post"): {"400", "404"},
    ("/v1/vms/{vm_id}/logs", "get"): {"400", "404"},
    ("/v1/vms/{vm_id}/stats", "get"): {"404"},
    ("/v1/vms/{vm_id}/exec-logs", "get"): {"400", "404"},
    ("/v1/admin/activity", "get"): {"400", "403"},
    ("/v1/admin/events", "get"): {"400", "403"},
    ("/v1/hosts", "get"): {"403"},
    ("/v1/hosts/{name}", "get"): {"403", "404"},
    ("/v1/hosts/{name}/images/{image_id}", "put"): {"403", "404", "409", "503"},
    ("/v1/admin/api-keys", "get"): {"403"},
    ("/v1/admin/api-keys", "post"): {"400", "403", "409"},
    ("/v1/admin/api-keys/{key_id}", "get"): {"403", "404"},
    ("/v1/admin/api-keys/{key_id}/revoke", "post"): {"403", "404"},
    ("/v1/admin/webhooks", "get"): {"403"},
    ("/v1/admin/webhooks", "post"): {"400", "403", "429"},
    ("/v1/admin/webhooks/{webhook_id}", "get"): {"403", "404"},
    ("/v1/admin/webhooks/{webhook_id}", "patch"): {"400", "403", "404"},
    ("/v1/admin/webhooks/{webhook_id}", "delete"): {"403", "404"},
    ("/v1/admin/webhooks/{webhook_id}/deliveries", "get"): {"400", "403", "404"},
    ("/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", "post"):
        {"403", "404", "409"},
    ("/v1/vms/{vm_id}/stop", "post"): {"404", "409"},
    ("/v1/vms/{vm_id}/start", "post"): {"404", "409", "504"},
    ("/v1/vms/{vm_id}/network", "put"): {"400", "404"},
    ("/v1/vms/{vm_id}/exec", "post"): {"400", "404", "409", "504"},
    ("/v1/vms/{vm_id}/run-ts", "post"): {"400", "404", "409", "504"},
    ("/v1/vms/{vm_id}/run-js", "post"): {"400", "404", "409", "504"},
    ("/v1/vms/{vm_id}/files/upload", "post"): {"400", "404", "409", "413", "504"},
    ("/v1/vms/{vm_id}/files/download", "get"): {"400", "404", "409", "413", "504"},
    ("/v1/vms/{vm_id}/snapshots", "post"): {"404", "409", "503", "504"},
    ("/v1/snapshots", "get"): {"503"},
    ("/v1/snapshots/{snapshot_id}", "get"): {"404"},
    ("/v1/snapshots/{snapshot_id}", "delete"): {"404", "409"},
    ("/v1/images", "get"): {"503"},
    ("/v1/images", "post"): {"400", "409", "429"},
    ("/v1/images/{image_id}", "get"): {"404"},
    ("/v1/images/{image_id}", "delete"): {"404", "409"},
    ("/v1/images/{image_id}/set-default", "post"): {"404", "409"},
    ("/v1/images/{image_id}/files", "put"): {"400", "404", "409", "413"},
    ("/v1/images/{image_id}/disk", "put"): {"400", "404", "409", "413"},
    ("/v1/images/{image_id}/build-log", "get"): {"400", "404"},
}


def spec(client) -> dict:
    response = client.get("/swagger/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_healthz_is_public_and_reports_libvirt(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "libvirt": "reachable",
                                   "libvirtVersion": "10.0.0", "network": "active",
                                   "networkPolicy": "enforced", "accelerator": "tcg"}


@pytest.mark.parametrize("value", ["0", None])
def test_healthz_unhealthy_when_bridge_netfilter_is_off(client, fakes, value):
    bridge_nf = fakes.bridge_nf
    """Without bridge netfilter the guests' IP rules are skipped: the host must not get work."""
    if value is None:
        bridge_nf.unlink()  # br_netfilter not loaded at all
    else:
        bridge_nf.write_text(value + "\n")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy" and "not enforced" in body["networkPolicy"]


def test_healthz_degraded_when_network_is_down(client, services):
    services.hypervisor.network_active = False
    body = client.get("/healthz").get_json()
    assert (body["status"], body["network"]) == ("degraded", "inactive")


def test_healthz_503_when_libvirt_is_down(client, services):
    services.hypervisor.down = HypervisorError("libvirt did not answer ping within 30s")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    assert "did not answer" in response.get_json()["libvirt"]


@pytest.mark.parametrize("path", ["/docs", "/docs/", "/docs/index.html",
                                  "/docs/vms/listVms"])
def test_swagger_ui_is_public_at_docs_and_below(client, path):
    """The contract's ``/docs/*``: no credentials, no redirect, the same page everywhere."""
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "swagger-ui" in response.text
    assert "/swagger/openapi.json" in response.text
    assert 'src="/docs/static/swagger-ui-bundle.js"' in response.text  # absolute: any depth


def test_swagger_ui_assets_are_served(client):
    response = client.get("/docs/static/swagger-ui-bundle.js")
    assert response.status_code == 200
    assert b"SwaggerUIBundle" in response.data
    assert client.get("/docs/static/no-such-file.js").status_code == 404


def test_both_spec_urls_serve_the_same_document(client):
    document = spec(client)
    assert document["openapi"].startswith("3.")
    assert client.get("/openapi.json").get_json() == document


def test_every_v1_operation_is_secured_and_documents_its_errors(client):
    paths = spec(client)["paths"]
    operations = {(path, method): op for path, item in paths.items() if path.startswith("/v1")
                  for method, op in item.items() if method != "parameters"}
    assert set(operations) == set(DOCUMENTED_ERRORS)
    for key, operation in operations.items():
        assert {"401"} | DOCUMENTED_ERRORS[key] <= set(operation["responses"]), key
        assert operation["security"] == [{"ApiKeyAuth": []}, {"SessionCookie": []}], key
        assert operation.get("summary"), key


def test_public_routes_need_no_security(client):
    paths = spec(client)["paths"]
    assert "security" not in paths["/healthz"]["get"]
    assert "security" not in paths["/auth/login"]["post"]


def test_validation_errors_are_documented_as_400_not_422(client):
    post = spec(client)["paths"]["/v1/vms"]["post"]
    assert "422" not in post["responses"]


def test_spec_matches_snapshot(client, golden):
    """A deliberate API change: REGENERATE_GOLDEN=1, then review the diff of data/openapi.json."""
    golden("openapi.json", json.dumps(spec(client), indent=2, sort_keys=True) + "\n")


def test_state_changing_v1_operations_document_the_csrf_403(client):
    """...and the admin routes the 403 of a key without the admin scope."""
    paths = spec(client)["paths"]
    for (path, method) in DOCUMENTED_ERRORS:
        responses = paths[path][method]["responses"]
        assert ("403" in responses) == (method in ("post", "put", "patch", "delete")
                                        or required_scope(method.upper(), path) == "admin"), \
            (path, method)


def test_auth_routes_document_rate_limit_and_csrf(client):
    paths = spec(client)["paths"]
    login = paths["/auth/login"]["post"]["responses"]
    assert {"400", "401", "429"} <= set(login)
    assert "Retry-After" in login["429"]["headers"]
    assert "403" in paths["/auth/logout"]["post"]["responses"]
