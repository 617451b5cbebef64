"""Schemas of the managed API keys (/v1/admin/api-keys)."""
from __future__ import annotations

import datetime as dt
import typing as t

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

from app.actor import SCOPES

# Names show up as the actor ("key:<name>") in events, exec history and VMs' createdBy.
NAME = r"[A-Za-z0-9][A-Za-z0-9 ._@:+-]{0,63}"
MAX_KEY_VMS = 10_000
LATEST_EXPIRY = dt.datetime(9000, 1, 1, tzinfo=dt.timezone.utc)


def _unique(scopes: list[str]) -> None:
    if len(set(scopes)) != len(scopes):
        raise ValidationError("each scope at most once")


class ApiKeyCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(
        f"^{NAME}$", error="must be 1-64 characters of letters, digits, space and ._@:+-, "
                           "starting with a letter or digit"))
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)),
                         load_default=lambda: ["vms"],
                         validate=[validate.Length(min=1, max=len(SCOPES)), _unique],
                         metadata={"uniqueItems": True,
                                   "description": "vms: VMs (only the key's own), their "
                                                  "commands, files and snapshots, reading "
                                                  "images; admin: everything, /v1/admin too"})
    maxVms = fields.Integer(strict=True, load_default=None, allow_none=True,
                            validate=validate.Range(min=1, max=MAX_KEY_VMS),
                            metadata={"description": "the key's own VM quota on top of the "
                                                     "host's MAX_VMS (429 beyond it); null: "
                                                     "none"})
    expiresAt = fields.AwareDateTime(load_default=None, allow_none=True,
                                     default_timezone=dt.timezone.utc,
                                     metadata={"description": "ISO-8601; after it the key "
                                                              "answers 401 (null: never)"})

    @post_load
    def _sane_expiry(self, data: dict[str, t.Any], **_kwargs: t.Any) -> dict[str, t.Any]:
        expires = data["expiresAt"]
        if expires is not None and expires >= LATEST_EXPIRY:
            raise ValidationError("must be before the year 9000", "expiresAt")
        return data


class ApiKeySchema(Schema):
    """A key as every answer shows it (never the secret, except ``key`` on create)."""

    id = fields.String(dump_only=True, required=True)
    name = fields.String(dump_only=True, required=True)
    prefix = fields.String(dump_only=True, required=True, metadata={
        "description": "the 8 characters after 'rds_': tells keys apart in lists"})
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)), dump_only=True,
                         required=True)
    maxVms = fields.Integer(dump_only=True, required=True, allow_none=True,
                            attribute="max_vms")
    createdAt = fields.String(dump_only=True, required=True, attribute="created_at")
    createdBy = fields.String(dump_only=True, required=True, attribute="created_by",
                              metadata={"description": "the actor that created it"})
    expiresAt = fields.String(dump_only=True, required=True, allow_none=True,
                              attribute="expires_at")
    lastUsedAt = fields.String(dump_only=True, required=True, allow_none=True,
                               attribute="last_used_at", metadata={
                                   "description": "updated at most once a minute"})
    revokedAt = fields.String(dump_only=True, required=True, allow_none=True,
                              attribute="revoked_at")


class NewApiKeySchema(ApiKeySchema):
    """The create answer: the key with its secret, shown this once."""

    key = fields.String(dump_only=True, required=True, metadata={
        "description": "the whole key (rds_<prefix>_<secret>), for the X-API-Key header; "
                       "shown only here, only its SHA-256 is kept"})
