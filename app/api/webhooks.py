"""/v1/admin/webhooks: who is told about events (signed POSTs), and what they were told."""
from __future__ import annotations

from flask.views import MethodView

from app.api import ADMIN_ONLY, Blueprint, document_errors, services
from app.schemas.webhooks import (DeliveryQuerySchema, DeliverySchema, WebhookCreatedSchema,
                                  WebhookCreateSchema, WebhookSchema, WebhookUpdateSchema)

blp = Blueprint("webhooks", __name__, url_prefix="/v1/admin/webhooks",
                description="Webhooks: events POSTed to your URL, signed (X-RDS-Signature), "
                            "in order, retried with backoff")
REASONS = {
    400: "Invalid input, or a URL webhooks may not be sent to (not http(s), or its host "
         "resolves to the guests' network or a link-local address)",
    404: "Unknown webhook or delivery",
    409: "The delivery is being sent right now",
    429: "The most webhooks there may be (100) exist",
    **ADMIN_ONLY,
}


@blp.route("")
class Webhooks(MethodView):
    @blp.doc(operationId="listWebhooks")
    @blp.response(200, WebhookSchema(many=True))
    @document_errors(blp, 403, reasons=REASONS)
    def get(self):
        """List webhooks (without their secrets)"""
        return services().webhooks.list()

    @blp.doc(operationId="createWebhook")
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @document_errors(blp, 400, 403, 429, reasons=REASONS)
    def post(self, body):
        """Create a webhook; the answer holds its secret, which is never shown again"""
        return services().webhooks.create(body["name"], body["url"], body["event_types"],
                                          body["enabled"])


@blp.route("/<webhook_id>")
class WebhookById(MethodView):
    @blp.doc(operationId="getWebhook")
    @blp.response(200, WebhookSchema)
    @document_errors(blp, 403, 404, reasons=REASONS)
    def get(self, webhook_id):
        """Get a webhook"""
        return services().webhooks.get(webhook_id)

    @blp.doc(operationId="updateWebhook")
    @blp.arguments(WebhookUpdateSchema)
    @blp.response(200, WebhookSchema)
    @document_errors(blp, 400, 403, 404, reasons=REASONS)
    def patch(self, body, webhook_id):
        """Change a webhook's name, URL, event types or enabled flag

        A disabled webhook's queued deliveries wait and are sent once it is enabled again.
        """
        return services().webhooks.update(webhook_id, body)

    @blp.doc(operationId="deleteWebhook")
    @blp.response(204)
    @document_errors(blp, 403, 404, reasons=REASONS)
    def delete(self, webhook_id):
        """Delete a webhook and its deliveries"""
        services().webhooks.delete(webhook_id)


@blp.route("/<webhook_id>/deliveries")
class Deliveries(MethodView):
    @blp.doc(operationId="listWebhookDeliveries")
    @blp.arguments(DeliveryQuerySchema, location="query")
    @blp.response(200, DeliverySchema(many=True))
    @document_errors(blp, 400, 403, 404, reasons=REASONS)
    def get(self, query, webhook_id):
        """A webhook's deliveries, newest first: state, attempts, last answer, next try"""
        return services().webhooks.deliveries(webhook_id, query["limit"], set(query["state"]))


@blp.route("/<webhook_id>/deliveries/<delivery_id>/redeliver")
class Redeliver(MethodView):
    @blp.doc(operationId="redeliverWebhookDelivery")
    @blp.response(200, DeliverySchema)
    @document_errors(blp, 403, 404, 409, reasons=REASONS)
    def post(self, webhook_id, delivery_id):
        """Send a delivery again

        One waiting for its next try is tried now, in its place in the queue; a delivered or
        failed one goes to the end of the webhook's queue with its attempts reset.
        """
        return services().webhooks.redeliver(webhook_id, delivery_id)
