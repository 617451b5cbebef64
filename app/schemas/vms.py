"""Schemas of the VM resource."""
from __future__ import annotations

import ipaddress

from marshmallow import (INCLUDE, RAISE, Schema, ValidationError, fields, post_load, validate,
                         validates)

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


class NetworkPolicySchema(Schema):
    """A VM's egress policy; also the body of ``PUT /v1/vms/{id}/network``."""

    class Meta:
        unknown = RAISE

    allowIps = fields.List(fields.String(), load_default=list,
                           metadata={"description": "IPv4/IPv6 addresses or CIDRs the guest "
                                                    "may reach when outboundInternet is true"})
    outboundInternet = fields.Boolean(load_default=False)

    @validates("allowIps")
    def _validate_allow_ips(self, value: list[str], **_kwargs) -> None:
        for index, entry in enumerate(value):
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValidationError(
                    f"allowIps[{index}] {entry!r} is not an IPv4/IPv6 address or CIDR") from None

    @post_load
    def _normalise(self, data: dict, **_kwargs) -> dict:
        # Host bits are cleared (10.0.0.5/8 -> 10.0.0.0/8) and duplicates dropped, in order.
        seen: dict[str, None] = {}
        for entry in data["allowIps"]:
            seen[str(ipaddress.ip_network(entry.strip(), strict=False))] = None
        data["allowIps"] = list(seen)
        return data


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


class VmSchema(Schema):
    """A VM as every answer shows it: all fields always present (``required``)."""

    id = fields.String(dump_only=True, required=True)
    name = fields.String(dump_only=True, required=True,
                         metadata={"description": "libvirt domain name (virsh)"})
    state = fields.String(dump_only=True, required=True, validate=validate.OneOf(
        ["STARTING", "RUNNING", "STOPPING", "STOPPED", "ERROR"]))
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

    def get_attribute(self, obj, attr, default):  # VmState enum -> its value
        value = super().get_attribute(obj, attr, default)
        return getattr(value, "value", value)
