"""/v1/hosts: the libvirt hosts VMs are placed on, read live (admin scope)."""
from __future__ import annotations

from flask.views import MethodView

from app.api import ADMIN_ONLY, Blueprint, document_errors, services
from app.schemas.hosts import HostSchema, ShipmentSchema

blp = Blueprint("hosts", __name__, url_prefix="/v1/hosts", description="Hosts (admin)")


@blp.route("")
class Hosts(MethodView):
    @blp.doc(operationId="listHosts")
    @blp.response(200, HostSchema(many=True))
    @document_errors(blp, 403, reasons=ADMIN_ONLY)
    def get(self):
        """List the hosts: state, CPUs, memory, VMs and images ready on each

        `local` (the LIBVIRT_URI the service runs on), then each of HOSTS. A host whose
        libvirt does not answer (a remote one: within HOST_PROBE_TIMEOUT_S) is listed as DOWN
        with the reason (still 200).
        """
        return services().hosts.list()


@blp.route("/<name>")
class HostByName(MethodView):
    @blp.doc(operationId="getHost")
    @blp.response(200, HostSchema)
    @document_errors(blp, 403, 404, reasons={**ADMIN_ONLY, 404: "Unknown host"})
    def get(self, name):
        """Get a host"""
        return services().hosts.get(name)


@blp.route("/<name>/images/<image_id>")
class HostImage(MethodView):
    @blp.doc(operationId="shipImage")
    @blp.response(200, ShipmentSchema)
    @document_errors(blp, 403, 404, 409, reasons={
        **ADMIN_ONLY, 404: "Unknown host (not in HOSTS) or image",
        409: "The image is not READY, or is being shipped to that host already",
        503: "The host does not answer, the image is not built here, or what arrived did "
             "not match"})
    def put(self, name, image_id):
        """Ship an image to a remote host

        Uploads the image's current build into the host's `rds-images` storage pool
        (libvirt storage streams), reads it back and compares SHA-256 checksums; the image is
        ready there (`GET /v1/images` `hosts`) once all its volumes matched. Then the
        image's memory snapshot of each `SNAPSHOT_SHAPES` shape is made on that host (the
        image booted there once and saved by its libvirt), from which creates there restore;
        a failure of that step is reported in `memorySnapshotError` and leaves the image
        ready (VMs there boot). Takes as long as the transfer (about twice the image's size
        over the link) and one boot there.
        """
        return services().shipper.ship(name, image_id)
