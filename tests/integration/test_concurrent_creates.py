"""Two service instances (as two gunicorn workers would be) creating VMs at the same time get
distinct addresses, MACs and names: allocation is locked host-wide, libvirt is the record."""
from __future__ import annotations

import concurrent.futures
import re

from app import create_app
from tests.integration.conftest import API_KEY, HEADERS, virsh

BODY = {"cpu": 1, "memMb": 256}


def test_concurrent_creates_from_two_workers_get_distinct_addresses(api):
    workers = [create_app({"TESTING": True, "API_KEY": API_KEY}) for _ in range(2)]

    def create(app):
        response = app.test_client().post("/v1/vms", json=BODY, headers=HEADERS)
        if response.status_code == 201:
            api.created.append(response.json["id"])  # cleaned up even if asserts fail
        return response

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(create, workers))
    assert [r.status_code for r in responses] == [201, 201], [r.json for r in responses]
    first, second = (r.json for r in responses)
    assert first["guestIp"] != second["guestIp"]
    assert first["name"] != second["name"]
    macs = [re.search(r"<mac address='([0-9a-f:]+)'", virsh("dumpxml", vm["name"]).stdout)
            .group(1) for vm in (first, second)]
    assert macs[0] != macs[1]
    for vm in (first, second):
        assert api.request("GET", f"/v1/vms/{vm['id']}").json["state"] == "RUNNING"
        api.delete_vm(vm["id"])
    for app in workers:
        app.extensions["rds"].close()
