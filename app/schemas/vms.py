"""Schemas of the VM resource."""
from __future__ import annotations

import re

from marshmallow import (EXCLUDE, INCLUDE, RAISE, Schema, ValidationError, fields, post_load,
                         validate, validates)

from app.schemas.addresses import IP_OR_CIDR, parse_ip_or_cidr
from app.schemas.fields import StrictBoolean
from app.schemas.snapshots import SnapshotRefSchema


class ApiErrorSchema(Schema):
    """Every error answer; more fields may ride along (``additionalProperties``)."""

    class Meta:
        unknown = INCLUDE

    message = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "per-field details of a validation failure "
                                                  "(400 only)"})
    requestId = fields.String(metadata={"description": "the request's id, on an unexpected "
                                                       "error (500 only)"})


LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9_./-]{0,62}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_SECONDS = 10 * 365 * 24 * 3600  # ten years: any lifetime a caller can mean


def validate_labels(labels: dict[str, str]) -> None:
    """At most 32; keys like ``ci.job`` or ``team/x``; values of at most 256 printable
    characters (they live in the domain's XML)."""
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            raise ValidationError(f"label key {key[:80]!r} must be 1-63 characters of a-z, "
                                  f"0-9, '_', '.', '-', '/', starting with a letter or digit")
        if len(value) > MAX_LABEL_VALUE:
            raise ValidationError(f"label {key!r}: value longer than {MAX_LABEL_VALUE} "
                                  f"characters")
        if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
            raise ValidationError(f"label {key!r}: value has a control character")


# What validate_labels takes of a value, as the OpenAPI document says it (the key's rule,
# LABEL_KEY, is in the description: OpenAPI 3.0 has no propertyNames).
LABEL_VALUE = {"maxLength": MAX_LABEL_VALUE,
               "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*\\Z"}


def labels_field(**kwargs) -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.String(metadata=LABEL_VALUE),
                       validate=validate_labels,
                       metadata={"description": "labels: at most 32, keys [a-z0-9][a-z0-9_./-]"
                                                "{0,62}, values up to 256 characters without "
                                                "control characters",
                                 "maxProperties": MAX_LABELS},
                       **kwargs)


def seconds_field(description: str, **kwargs) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_SECONDS),
                          metadata={"description": description}, **kwargs)


class NetworkPolicySchema(Schema):
    """A VM's egress policy; also the body of ``PUT /v1/vms/{id}/network``."""

    class Meta:
        unknown = RAISE

    allowIps = fields.List(fields.String(metadata={"pattern": IP_OR_CIDR}), load_default=list,
                           metadata={"description": "IPv4/IPv6 addresses or CIDRs the guest "
                                                    "may reach when outboundInternet is true "
                                                    "(at most MAX_ALLOW_IPS entries)"})
    outboundInternet = StrictBoolean(load_default=False)

    @validates("allowIps")
    def _validate_allow_ips(self, value: list[str], **_kwargs) -> None:
        for index, entry in enumerate(value):
            try:
                parse_ip_or_cidr(entry)
            except ValueError:
                raise ValidationError(
                    f"allowIps[{index}] {entry!r} is not an IPv4/IPv6 address or CIDR") from None

    @post_load
    def _normalise(self, data: dict, **_kwargs) -> dict:
        # Host bits are cleared (10.0.0.5/8 -> 10.0.0.0/8) and duplicates dropped, in order.
        # How many were given stays: MAX_ALLOW_IPS (the document's maxItems) counts them
        # (app.api.allow_ips).
        seen: dict[str, None] = {}
        for entry in data["allowIps"]:
            seen[parse_ip_or_cidr(entry)] = None
        data["allowIpsGiven"] = list(data["allowIps"])
        data["allowIps"] = list(seen)
        return data


class PlacementSchema(Schema):
    """Where a VM is made (issue 17, docs/multihost.md)."""

    class Meta:
        unknown = RAISE

    host = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z0-9-]{0,31}\Z"),
                         metadata={"description": "the host's name: 'local' (LIBVIRT_URI's) or "
                                                  "one of HOSTS (GET /v1/hosts). A remote "
                                                  "host's VM is booted cold (no memory "
                                                  "snapshot or warm pool there yet) from the "
                                                  "image shipped there; an unknown host is "
                                                  "400, a host that does not answer 503, an "
                                                  "image not shipped there 409"})


class VmCreateSchema(NetworkPolicySchema, SnapshotRefSchema):
    cpu = fields.Integer(required=True, strict=True, validate=validate.Range(min=1),
                         metadata={"description": "vCPUs, 1..MAX_CPU"})
    memMb = fields.Integer(required=True, strict=True, validate=validate.Range(min=128),
                           metadata={"description": "memory in MiB, 128..MAX_MEM_MB"})
    imageId = fields.String(load_default=None, allow_none=True,
                            metadata={"description": "template in vm-templates/ (default: "
                                                     "'default')"})
    diskSizeMb = fields.Integer(load_default=None, allow_none=True, strict=True,
                                validate=validate.Range(min=1, max=1024 * 1024))
    provisionMode = fields.String(
        load_default="auto", validate=validate.OneOf(["auto", "boot", "snapshot", "pool"]),
        metadata={"description": "how to make the VM: 'pool' (a pre-started VM), 'snapshot' "
                                 "(restore a saved booted guest), 'boot' (cold boot), or "
                                 "'auto' (the fastest available). A faster path that is not "
                                 "available falls back to the next one; the response's "
                                 "provisionMode says which was used."})
    labels = labels_field(load_default=dict)
    ttlSeconds = seconds_field("lifetime: the VM is deleted this long after it is created "
                               "(0: never; default VM_DEFAULT_TTL_S, at most VM_MAX_TTL_S); "
                               "POST .../keepalive renews it", load_default=None)
    placement = fields.Nested(PlacementSchema, load_default=None, allow_none=True,
                              metadata={"description": "where to make the VM (default: the "
                                                       "local host)"})
    idleStopSeconds = seconds_field("stop the VM (disk kept) after this long without "
                                    "exec, run-ts/js, files, start, keepalive or label "
                                    "changes (0: never)", load_default=0)


class VmPatchSchema(Schema):
    class Meta:
        unknown = RAISE

    labels = labels_field(required=True)


class KeepaliveSchema(Schema):
    class Meta:
        unknown = RAISE

    ttlSeconds = seconds_field("the new lifetime, from now (default: the VM's own ttlSeconds "
                               "again)", load_default=None)


STATES = ["STARTING", "RUNNING", "STOPPING", "STOPPED", "ERROR", "UNKNOWN"]
LABEL_FILTER = fields.String(metadata={"description": "KEY=VALUE, or KEY for any value",
                                       "pattern": "^[^=]"})  # a key: app.services.listing


class VmListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    label = fields.List(LABEL_FILTER, load_default=list,
                        metadata={"description": "only VMs with this label (repeatable: all "
                                                 "must match)"})
    state = fields.String(load_default=None, validate=validate.OneOf(STATES))
    limit = fields.Integer(load_default=None, strict=False, validate=validate.Range(1, 1000),
                           metadata={"description": "page size (opt-in paging): the answer "
                                                    "is still an array; X-Next-Cursor and "
                                                    "Link rel=next name the next page"})
    cursor = fields.String(load_default=None, validate=validate.Length(max=1024),
                           metadata={"description": "X-Next-Cursor of the previous page"})


class VmDeleteQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    label = fields.List(LABEL_FILTER, required=True, validate=validate.Length(min=1),
                        metadata={"description": "delete the VMs with all these labels "
                                                 "(at least one is required)"})


class VmDeleteOneQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    wait = fields.Boolean(load_default=False,
                          metadata={"description": "answer only once everything of the VM "
                                                   "is removed (default: once it is off)"})


class DeleteFailureSchema(Schema):
    id = fields.String(required=True)
    message = fields.String(required=True)


class DeletedVmsSchema(Schema):
    deleted = fields.List(fields.String(), required=True,
                          metadata={"description": "ids of deleted VMs"})
    failed = fields.List(fields.Nested(DeleteFailureSchema), required=True,
                         metadata={"description": "VMs that matched but could not be deleted"})


class VmSchema(Schema):
    """A VM as every answer shows it: all fields always present (``required``)."""

    id = fields.String(dump_only=True, required=True)
    name = fields.String(dump_only=True, required=True,
                         metadata={"description": "libvirt domain name (virsh)"})
    state = fields.String(dump_only=True, required=True, validate=validate.OneOf(STATES))
    cpu = fields.Integer(dump_only=True, required=True)
    memMb = fields.Integer(dump_only=True, required=True, attribute="mem_mb")
    guestIp = fields.String(dump_only=True, required=True, attribute="guest_ip")
    outboundInternet = fields.Boolean(dump_only=True, required=True,
                                      attribute="outbound_internet")
    allowIps = fields.List(fields.String(), dump_only=True, required=True,
                           attribute="allow_ips")
    createdAt = fields.String(dump_only=True, required=True, attribute="created_at")
    imageId = fields.String(dump_only=True, required=True, attribute="image_id")
    provisionMode = fields.String(dump_only=True, required=True, attribute="provision_mode",
                                  validate=validate.OneOf(["boot", "snapshot", "pool"]))
    snapshotId = fields.String(dump_only=True, required=True, allow_none=True,
                               attribute="snapshot_id",
                               metadata={"description": "snapshot its disk started from, or "
                                                        "null (extension)"})
    labels = fields.Dict(keys=fields.String(), values=fields.String(), dump_only=True,
                         required=True)
    expiresAt = fields.String(dump_only=True, required=True, allow_none=True,
                              attribute="expires_at",
                              metadata={"description": "when the VM is deleted, or null"})
    idleStopSeconds = fields.Integer(dump_only=True, required=True, attribute="idle_stop_s")
    createdBy = fields.String(dump_only=True, required=True, allow_none=True,
                              attribute="created_by", metadata={
                                  "description": "who created it: 'key:<name>' (a managed API "
                                                 "key), 'api-key' (the bootstrap key), "
                                                 "'session:<email>'; null for older VMs"})

    host = fields.String(dump_only=True, required=True,
                         metadata={"description": "the host it runs on: 'local' or one of "
                                                  "HOSTS"})

    def get_attribute(self, obj, attr, default):  # VmState enum -> its value
        value = super().get_attribute(obj, attr, default)
        return getattr(value, "value", value)
