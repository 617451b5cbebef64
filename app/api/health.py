"""Public health probe."""
from __future__ import annotations

from flask.views import MethodView

from app.api import Blueprint, services
from app.schemas.auth import HealthSchema

blp = Blueprint("health", __name__, url_prefix="/", description="Health")


@blp.route("healthz")
class Health(MethodView):
    @blp.doc(operationId="getHealth")
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema,
                      description="libvirt unreachable, or the network policy not enforced")
    def get(self):
        """Whether libvirt, the guest network and the network policy are working"""
        health = services().health.check()
        return health, 200 if health.healthy else 503
