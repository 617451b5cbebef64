"""/v1/vms: create, list, inspect, label, keep alive, stop, start and delete VMs."""
from __future__ import annotations

import urllib.parse

from flask import request
from flask.views import MethodView

from app.api import Blueprint, allow_ips, document_errors, required_body, services
from app.models import ProvisionMode, VmSpec, VmState
from app.schemas.vms import (DeletedVmsSchema, KeepaliveSchema, NetworkPolicySchema,
                             VmCreateSchema, VmDeleteOneQuerySchema, VmDeleteQuerySchema,
                             VmListQuerySchema, VmPatchSchema, VmSchema)
from app.services.listing import VmQuery, parse_label_filter

blp = Blueprint("vms", __name__, url_prefix="/v1/vms", description="Sandbox VMs")

@blp.route("")
class Vms(MethodView):
    @blp.doc(operationId="listVms")
    @blp.arguments(VmListQuerySchema, location="query")
    @blp.response(200, VmSchema(many=True), headers={
        "X-Next-Cursor": {"description": "with limit: the cursor of the next page (absent "
                                         "on the last)", "schema": {"type": "string"}},
        "Link": {"description": 'with limit: <...>; rel="next"',
                 "schema": {"type": "string"}}})
    @document_errors(blp, 400)
    def get(self, query):
        """List VMs, oldest first; filter by label and state, page with limit and cursor"""
        page = services().vms.query(VmQuery(
            labels=tuple(parse_label_filter(text) for text in query["label"]),
            state=VmState(query["state"]) if query["state"] else None,
            limit=query["limit"], cursor=query["cursor"]))
        if page.next_cursor is None:
            return page.vms
        params = [(key, value) for key, value in request.args.items(multi=True)
                  if key != "cursor"] + [("cursor", page.next_cursor)]
        link = f"<{request.path}?{urllib.parse.urlencode(params)}>; rel=\"next\""
        return page.vms, 200, {"X-Next-Cursor": page.next_cursor, "Link": link}

    @blp.doc(operationId="createVm")
    @blp.arguments(VmCreateSchema)
    @blp.response(201, VmSchema)
    @document_errors(blp, 400, 404, 409, 429, 504, 507, reasons={
        409: "The image (imageId) is not READY: still being built, or its build failed; or "
             "its current build is not shipped to the placement host"})
    def post(self, body):
        """Create a VM and boot it; answers once commands can run in it"""
        spec = VmSpec(cpu=body["cpu"], mem_mb=body["memMb"], allow_ips=allow_ips(body),
                      outbound_internet=body["outboundInternet"], image_id=body["imageId"],
                      disk_size_mb=body["diskSizeMb"], snapshot_id=body["snapshotId"],
                      provision_mode=ProvisionMode(body["provisionMode"]),
                      labels=body["labels"], ttl_s=body["ttlSeconds"],
                      idle_stop_s=body["idleStopSeconds"],
                      host=(body["placement"] or {}).get("host"))
        return services().vms.create(spec)

    @blp.doc(operationId="deleteVms")
    @blp.arguments(VmDeleteQuerySchema, location="query")
    @blp.response(200, DeletedVmsSchema)
    @document_errors(blp, 400)
    def delete(self, query):
        """Delete every VM that carries all the given labels (a CI job's cleanup)"""
        deleted, failed = services().vms.delete_matching(
            tuple(parse_label_filter(text) for text in query["label"]))
        return {"deleted": deleted, "failed": failed}


@blp.route("/<vm_id>")
class VmById(MethodView):
    @blp.doc(operationId="getVm")
    @blp.response(200, VmSchema)
    @document_errors(blp, 404)
    def get(self, vm_id):
        """Get a VM"""
        return services().vms.get(vm_id)

    @blp.doc(operationId="updateVm")
    @blp.arguments(VmPatchSchema)
    @blp.response(200, VmSchema)
    @document_errors(blp, 400, 404, 409)
    def patch(self, body, vm_id):
        """Replace a VM's labels"""
        return services().vms.set_labels(vm_id, body["labels"])

    @blp.doc(operationId="deleteVm")
    @blp.arguments(VmDeleteOneQuerySchema, location="query")
    @blp.response(204)
    @document_errors(blp, 404, 409, 429)
    def delete(self, query, vm_id):
        """Delete a VM: domain, disk, filter and address

        Answers once the VM is powered off; its disk, filter and address are released right
        after (with ?wait=true: before answering).
        """
        services().vms.delete(vm_id, wait=query["wait"])


@blp.route("/<vm_id>/keepalive")
class VmKeepalive(MethodView):
    @blp.doc(operationId="keepaliveVm")
    @blp.arguments(KeepaliveSchema, required=False)  # no body: the VM's own ttlSeconds
    @blp.response(200, VmSchema)
    @document_errors(blp, 400, 404, 409)
    def post(self, body, vm_id):
        """Renew a VM's lifetime from now (ttlSeconds, default: its own again)"""
        return services().vms.keepalive(vm_id, body["ttlSeconds"])


@blp.route("/<vm_id>/stop")
class VmStop(MethodView):
    @blp.doc(operationId="stopVm")
    @blp.response(204)
    @document_errors(blp, 404, 409, 429)
    def post(self, vm_id):
        """Stop a RUNNING VM with a clean guest shutdown; the disk is kept"""
        services().vms.stop(vm_id)


@blp.route("/<vm_id>/start")
class VmStart(MethodView):
    @blp.doc(operationId="startVm")
    @blp.response(204)
    @document_errors(blp, 404, 409, 429, 504)
    def post(self, vm_id):
        """Start a STOPPED VM from its kept disk"""
        services().vms.start(vm_id)


@blp.route("/<vm_id>/network")
class VmNetwork(MethodView):
    @blp.doc(operationId="setVmNetwork")
    @blp.arguments(required_body(NetworkPolicySchema))
    @blp.response(200, VmSchema)
    @document_errors(blp, 400, 404, 409, 429)
    def put(self, body, vm_id):
        """Change a VM's egress policy, live (extension)"""
        return services().vms.update_network(vm_id, allow_ips(body),
                                             body["outboundInternet"])
