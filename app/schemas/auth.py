"""Schemas of the admin session."""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields


class LoginSchema(Schema):
    class Meta:
        unknown = RAISE

    email = fields.String(required=True)
    password = fields.String(required=True, load_only=True)


class SessionSchema(Schema):
    email = fields.String(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    libvirt = fields.String(required=True)
    libvirtVersion = fields.String()
    network = fields.String()
    accelerator = fields.String()
