"""Public health probe."""
from __future__ import annotations

from flask.views import MethodView

from app.api import Blueprint, services
from app.errors import AppError
from app.schemas.auth import HealthSchema

blp = Blueprint("health", __name__, url_prefix="/", description="Health")


@blp.route("healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="libvirt unreachable")
    def get(self):
        """Whether libvirt (and the guest network) can be reached"""
        bundle = services()
        try:
            version = bundle.hypervisor.ping()
            network_up = bundle.hypervisor.network_is_active(bundle.settings.network_name)
        except AppError as exc:
            return {"status": "unavailable", "libvirt": exc.message,
                    "accelerator": bundle.domain_type}, 503
        return {"status": "ok" if network_up else "degraded", "libvirt": "reachable",
                "libvirtVersion": version,
                "network": "active" if network_up else "inactive",
                "accelerator": "kvm" if bundle.domain_type == "kvm" else "tcg"}
