"""/v1/vms: create, list, inspect, stop, start and delete VMs."""
from __future__ import annotations

from flask.views import MethodView

from app.api import Blueprint, document_errors, services
from app.models import ProvisionMode, VmSpec
from app.schemas.vms import NetworkPolicySchema, VmCreateSchema, VmSchema

blp = Blueprint("vms", __name__, url_prefix="/v1/vms", description="Sandbox VMs")

@blp.route("")
class Vms(MethodView):
    @blp.doc(operationId="listVms")
    @blp.response(200, VmSchema(many=True))
    @document_errors(blp)
    def get(self):
        """List VMs"""
        return services().vms.list()

    @blp.doc(operationId="createVm")
    @blp.arguments(VmCreateSchema)
    @blp.response(201, VmSchema)
    @document_errors(blp, 400, 404, 429, 504, 507)
    def post(self, body):
        """Create a VM and boot it; answers once commands can run in it"""
        spec = VmSpec(cpu=body["cpu"], mem_mb=body["memMb"], allow_ips=tuple(body["allowIps"]),
                      outbound_internet=body["outboundInternet"], image_id=body["imageId"],
                      disk_size_mb=body["diskSizeMb"], snapshot_id=body["snapshotId"],
                      provision_mode=ProvisionMode(body["provisionMode"]))
        return services().vms.create(spec)


@blp.route("/<vm_id>")
class VmById(MethodView):
    @blp.doc(operationId="getVm")
    @blp.response(200, VmSchema)
    @document_errors(blp, 404)
    def get(self, vm_id):
        """Get a VM"""
        return services().vms.get(vm_id)

    @blp.doc(operationId="deleteVm")
    @blp.response(204)
    @document_errors(blp, 404, 409, 429)
    def delete(self, vm_id):
        """Delete a VM: domain, disk, filter and address"""
        services().vms.delete(vm_id)


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
    @blp.arguments(NetworkPolicySchema)
    @blp.response(200, VmSchema)
    @document_errors(blp, 400, 404, 409, 429)
    def put(self, body, vm_id):
        """Change a VM's egress policy, live (extension)"""
        return services().vms.update_network(vm_id, tuple(body["allowIps"]),
                                             body["outboundInternet"])
