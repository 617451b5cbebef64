"""/v1/admin/api-keys: managed API keys (create, list, inspect, revoke); admin scope only."""
from __future__ import annotations

import dataclasses

from flask.views import MethodView

from app.api import ADMIN_ONLY, Blueprint, document_errors, services
from app.schemas.api_keys import ApiKeyCreateSchema, ApiKeySchema, NewApiKeySchema

blp = Blueprint("api_keys", __name__, url_prefix="/v1/admin/api-keys",
                description="Managed API keys (admin)")


@blp.route("")
class ApiKeys(MethodView):
    @blp.doc(operationId="listApiKeys")
    @blp.response(200, ApiKeySchema(many=True))
    @document_errors(blp, 403, reasons=ADMIN_ONLY)
    def get(self):
        """List API keys, revoked ones too, oldest first (never their secrets)"""
        return services().api_keys.list()

    @blp.doc(operationId="createApiKey")
    @blp.arguments(ApiKeyCreateSchema)
    @blp.response(201, NewApiKeySchema)
    @document_errors(blp, 400, 409, reasons={
        **ADMIN_ONLY, 409: "A live key has this name (revoke it first)"})
    def post(self, body):
        """Create an API key; the answer's `key` is the secret, shown only this once

        Use it as the X-API-Key header. Scope `vms` (the default) may create VMs and use only
        its own; `admin` may do everything. `maxVms` caps the key's VMs (429 beyond it).
        """
        new = services().api_keys.create(body["name"], body["scopes"], body["maxVms"],
                                          body["expiresAt"])
        return {**dataclasses.asdict(new.key), "key": new.secret}


@blp.route("/<key_id>")
class ApiKeyById(MethodView):
    @blp.doc(operationId="getApiKey")
    @blp.response(200, ApiKeySchema)
    @document_errors(blp, 403, 404, reasons={**ADMIN_ONLY, 404: "Unknown API key"})
    def get(self, key_id):
        """Get an API key"""
        return services().api_keys.get(key_id)


@blp.route("/<key_id>/revoke")
class ApiKeyRevoke(MethodView):
    @blp.doc(operationId="revokeApiKey")
    @blp.response(200, ApiKeySchema)
    @document_errors(blp, 404, reasons={**ADMIN_ONLY, 404: "Unknown API key"})
    def post(self, key_id):
        """Revoke an API key at once (401 from then on); revoking again changes nothing

        The key's VMs stay; admins still see and manage them.
        """
        return services().api_keys.revoke(key_id)
