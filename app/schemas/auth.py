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


class EmptySchema(Schema):
    """An answer with nothing to say: ``{}``."""


class HealthSchema(Schema):
    """``/healthz``: every field always present; the details are null when libvirt is
    unreachable."""

    status = fields.String(required=True, metadata={
        "description": "ok, degraded (guest network down), unhealthy (network policy not "
                       "enforced) or unavailable (libvirt unreachable)"})
    libvirt = fields.String(required=True)
    libvirtVersion = fields.String(required=True, allow_none=True, attribute="libvirt_version")
    network = fields.String(required=True, allow_none=True)
    networkPolicy = fields.String(required=True, allow_none=True, attribute="network_policy",
                                  metadata={"description": "'enforced', or why guests' IP "
                                                           "rules are not applied"})
    accelerator = fields.String(required=True)
