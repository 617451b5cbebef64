"""Schemas of the admin routes: the activity feed and the event stream."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from app.services.events import EVENT_TYPES

# An event's seq is an SQLite INTEGER: a larger number in a query is refused (400) rather than
# overflowing the driver (a 500 that schemathesis found on ?before=10**23).
MAX_SEQ = 2**63 - 1


class ActivityQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    type = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), load_default=list,
                       metadata={"description": "only these types (repeatable)"})
    before = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_SEQ),
                            metadata={"description": "only events older than this seq (the "
                                                     "next page: the last seq seen)"})


class EventStreamQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), load_default=list)
    after = fields.Integer(load_default=None, validate=validate.Range(min=0, max=MAX_SEQ),
                           metadata={
        "description": "start after this seq (as the Last-Event-ID header does); default: "
                       "only events from now on"})


class EntitySchema(Schema):
    type = fields.String(required=True)
    id = fields.String(required=True)


class EventSchema(Schema):
    id = fields.String(required=True)
    seq = fields.Integer(required=True, metadata={"description": "order on this host; the "
                                                                 "SSE event id"})
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    time = fields.String(required=True)
    entity = fields.Nested(EntitySchema, required=True)
    actor = fields.String(required=True, metadata={
        "description": "who caused it: 'api-key', 'session:<email>', or 'system'"})
    payload = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), required=True)
