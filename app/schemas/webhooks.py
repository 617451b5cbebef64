"""Schemas of the webhooks (``/v1/admin/webhooks``) and their deliveries."""
from __future__ import annotations

import typing as t

from marshmallow import (EXCLUDE, Schema, ValidationError, fields, validate,
                         validates_schema)

from app.clock import iso_at
from app.schemas.fields import NulFreeString, StrictBoolean
from app.services.events import EVENT_TYPES
from app.services.webhook_urls import MAX_URL_CHARS
from app.services.webhooks import DELIVERY_STATES

ALWAYS = {"dump_only": True, "required": True}  # an answer field every answer carries
MAX_NAME_CHARS = 100
# The scheme app.services.webhook_urls.parse insists on (any case: urlsplit lowers it).
URL_SCHEME = "^[Hh][Tt][Tt][Pp][Ss]?://"


def _name(**kwargs: t.Any) -> NulFreeString:
    return NulFreeString(validate=validate.Length(min=1, max=MAX_NAME_CHARS), **kwargs)


def _url(**kwargs: t.Any) -> NulFreeString:
    return NulFreeString(validate=validate.Length(min=1, max=MAX_URL_CHARS), metadata={
        "description": "http(s) URL the deliveries are POSTed to; not in the guests' network "
                       "(NETWORK_CIDR) nor link-local, by any address its host resolves to "
                       "(a host that does not resolve is refused: 400)",
        "pattern": URL_SCHEME},
        **kwargs)


def _event_types(**kwargs: t.Any) -> fields.List:
    return fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)),
                       validate=validate.Length(max=len(EVENT_TYPES) * 4),
                       attribute="event_types", metadata={
                           "description": "the event types to deliver; empty: every type"},
                       **kwargs)


class WebhookCreateSchema(Schema):
    name = _name(required=True)
    url = _url(required=True)
    eventTypes = _event_types(load_default=list)
    enabled = StrictBoolean(load_default=True)


class WebhookUpdateSchema(Schema):
    name = _name()
    url = _url()
    eventTypes = _event_types()
    enabled = StrictBoolean()

    @validates_schema
    def _something(self, data: dict[str, t.Any], **_kwargs: t.Any) -> None:
        if not data:
            raise ValidationError("give at least one of name, url, eventTypes, enabled")


class WebhookSchema(Schema):
    id = fields.String(**ALWAYS)
    name = fields.String(**ALWAYS)
    url = fields.String(**ALWAYS)
    eventTypes = fields.List(fields.String(), attribute="event_types", metadata={
        "description": "empty: every type"}, **ALWAYS)
    enabled = fields.Boolean(**ALWAYS)
    createdAt = fields.String(attribute="created_at", **ALWAYS)
    createdBy = fields.String(attribute="created_by", metadata={
        "description": "the actor that created it"}, **ALWAYS)
    updatedAt = fields.String(attribute="updated_at", **ALWAYS)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={
        "description": "signs the deliveries (X-RDS-Signature); shown only in this answer"},
        **ALWAYS)


def _time(name: str, nullable: bool = True, **metadata: t.Any) -> fields.Function:
    def dump(delivery: t.Any) -> str | None:
        value = getattr(delivery, name)
        return None if value is None else iso_at(value)
    return fields.Function(dump, allow_none=nullable, metadata=metadata, **ALWAYS)


class DeliverySchema(Schema):
    id = fields.String(metadata={"description": "the X-RDS-Delivery header"}, **ALWAYS)
    webhookId = fields.String(attribute="webhook_id", **ALWAYS)
    eventId = fields.String(attribute="event_id", **ALWAYS)
    eventType = fields.String(attribute="event_type", **ALWAYS)
    state = fields.String(validate=validate.OneOf(DELIVERY_STATES), metadata={
        "description": "pending (waits for its turn or its next try), delivering (being "
                       "sent), delivered (a 2xx answer), failed (retried for "
                       "WEBHOOK_RETRY_FOR_S without a 2xx)"}, **ALWAYS)
    attempts = fields.Integer(**ALWAYS)
    lastStatusCode = fields.Integer(attribute="last_status_code", allow_none=True, metadata={
        "description": "the HTTP status of the last attempt (null: none, or no answer)"},
        **ALWAYS)
    lastError = fields.String(attribute="last_error", allow_none=True, **ALWAYS)
    createdAt = _time("created_at", nullable=False)
    lastAttemptAt = _time("last_attempt_at")
    nextAttemptAt = _time("next_attempt_at", description="when it is tried (next); null "
                                                         "once delivered or failed")
    finishedAt = _time("finished_at", description="when it was delivered or failed")


class DeliveryQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    state = fields.List(fields.String(validate=validate.OneOf(DELIVERY_STATES)),
                        load_default=list, metadata={"description": "only these states "
                                                                    "(repeatable)"})
