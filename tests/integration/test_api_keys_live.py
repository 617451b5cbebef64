"""Managed API keys against a live gunicorn (two worker processes, as `make run` starts it)
and a real VM: a vms key's VM is its own (another vms key gets 404 and does not list it, an
admin key sees it), createdBy names the key, maxVms answers 429, and a revoked key is 401 in
every worker at once."""
from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.conftest import SEED_BODY

pytestmark = pytest.mark.integration


def _key(base: str, admin: dict[str, str], name: str, **body: object) -> dict:
    response = httpx.post(f"{base}/v1/admin/api-keys", json={"name": name, **body},
                          headers=admin, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def test_keys_own_their_vms_with_quota_and_revocation(rds_server):
    base, bootstrap = rds_server
    admin = {"X-API-Key": bootstrap}
    suffix = uuid.uuid4().hex[:8]
    team_a = _key(base, admin, f"team-a-{suffix}", maxVms=1)
    team_b = _key(base, admin, f"team-b-{suffix}")
    ops = _key(base, admin, f"ops-{suffix}", scopes=["vms", "admin"])
    as_a, as_b, as_ops = ({"X-API-Key": key["key"]} for key in (team_a, team_b, ops))
    created = httpx.post(f"{base}/v1/vms", json=SEED_BODY, headers=as_a, timeout=300)
    assert created.status_code == 201, created.text
    vm = created.json()
    try:
        assert vm["createdBy"] == f"key:team-a-{suffix}"
        ran = httpx.post(f"{base}/v1/vms/{vm['id']}/exec", json={"cmd": "echo owned"},
                         headers=as_a, timeout=60)
        assert ran.status_code == 200 and ran.json()["stdout"] == "owned\n", ran.text
        # Another vms key: the VM does not exist, on any route, in any worker.
        for _ in range(4):
            assert httpx.get(f"{base}/v1/vms/{vm['id']}", headers=as_b).status_code == 404
        assert httpx.post(f"{base}/v1/vms/{vm['id']}/exec", json={"cmd": "true"},
                          headers=as_b, timeout=60).status_code == 404
        assert httpx.delete(f"{base}/v1/vms/{vm['id']}", headers=as_b).status_code == 404
        assert vm["id"] not in [item["id"] for item in
                                httpx.get(f"{base}/v1/vms", headers=as_b).json()]
        assert httpx.get(f"{base}/v1/admin/api-keys", headers=as_b).status_code == 403
        # An admin key sees it, with its creator.
        seen = httpx.get(f"{base}/v1/vms/{vm['id']}", headers=as_ops)
        assert seen.status_code == 200 and seen.json()["createdBy"] == f"key:team-a-{suffix}"
        assert vm["id"] in [item["id"] for item in
                            httpx.get(f"{base}/v1/vms", headers=as_ops).json()]
        # The key's own quota, before the host's.
        over = httpx.post(f"{base}/v1/vms", json=SEED_BODY, headers=as_a, timeout=300)
        assert over.status_code == 429 and "API key" in over.json()["message"], over.text
        listed = httpx.get(f"{base}/v1/admin/api-keys/{team_a['id']}", headers=admin).json()
        assert listed["lastUsedAt"] is not None and "key" not in listed
        revoked = httpx.post(f"{base}/v1/admin/api-keys/{team_a['id']}/revoke", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["revokedAt"]
        for _ in range(4):
            answer = httpx.get(f"{base}/v1/vms/{vm['id']}", headers=as_a)
            assert answer.status_code == 401 and answer.json() == {"message": "Unauthorized"}
        assert httpx.get(f"{base}/v1/vms/{vm['id']}", headers=admin).status_code == 200
    finally:
        deleted = httpx.delete(f"{base}/v1/vms/{vm['id']}?wait=true", headers=admin,
                               timeout=120)
        assert deleted.status_code in (204, 404), deleted.text
        for key in (team_a, team_b, ops):
            httpx.post(f"{base}/v1/admin/api-keys/{key['id']}/revoke", headers=admin)
