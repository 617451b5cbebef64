"""Schemas of the admin session."""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

MAX_CREDENTIAL = 1024


class LoginSchema(Schema):
    class Meta:
        unknown = RAISE

    email = fields.String(required=True, validate=validate.Length(max=MAX_CREDENTIAL))
    password = fields.String(required=True, load_only=True,
                             validate=validate.Length(max=MAX_CREDENTIAL))


class SessionSchema(Schema):
    email = fields.String(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    libvirt = fields.String(required=True)
    libvirtVersion = fields.String()
    network = fields.String()
    accelerator = fields.String()
