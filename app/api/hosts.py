"""/v1/hosts: the libvirt hosts VMs are placed on, read live (admin scope)."""
from __future__ import annotations

from flask.views import MethodView

from app.api import ADMIN_ONLY, Blueprint, document_errors, services
from app.schemas.hosts import HostSchema

blp = Blueprint("hosts", __name__, url_prefix="/v1/hosts", description="Hosts (admin)")


@blp.route("")
class Hosts(MethodView):
    @blp.doc(operationId="listHosts")
    @blp.response(200, HostSchema(many=True))
    @document_errors(blp, 403, reasons=ADMIN_ONLY)
    def get(self):
        """List the hosts: state, CPUs, memory, VMs and images ready on each

        Today one host, `local` (the LIBVIRT_URI the service runs on). A host whose libvirt
        does not answer is listed as DOWN with the reason (still 200).
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
