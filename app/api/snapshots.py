"""/v1/vms/{id}/snapshots and /v1/snapshots: disk snapshots new VMs can start from
(extension)."""
from __future__ import annotations

from flask.views import MethodView

from app.api import Blueprint, document_errors, services
from app.schemas.snapshots import SnapshotSchema

blp = Blueprint("snapshots", __name__, url_prefix="/v1",
                description="Disk snapshots (extension): POST /v1/vms with snapshotId starts a "
                            "VM from one")


@blp.route("/vms/<vm_id>/snapshots")
class VmSnapshots(MethodView):
    @blp.doc(operationId="createSnapshot")
    @blp.response(201, SnapshotSchema)
    @document_errors(blp, 404, 409, 429, 504, 507)
    def post(self, vm_id):
        """Snapshot the disk of a RUNNING or STOPPED VM

        A running guest's filesystems are frozen during the copy, so unsynced writes are kept.
        """
        return services().snapshots.take(vm_id)


@blp.route("/snapshots")
class Snapshots(MethodView):
    @blp.doc(operationId="listSnapshots")
    @blp.response(200, SnapshotSchema(many=True))
    @document_errors(blp)
    def get(self):
        """List snapshots"""
        return services().snapshots.list()


@blp.route("/snapshots/<snapshot_id>")
class SnapshotById(MethodView):
    @blp.doc(operationId="getSnapshot")
    @blp.response(200, SnapshotSchema)
    @document_errors(blp, 404)
    def get(self, snapshot_id):
        """Get a snapshot"""
        return services().snapshots.get(snapshot_id)

    @blp.doc(operationId="deleteSnapshot")
    @blp.response(204)
    @document_errors(blp, 404, 409)
    def delete(self, snapshot_id):
        """Delete a snapshot; 409 while a VM created from it exists"""
        services().snapshots.delete(snapshot_id)
