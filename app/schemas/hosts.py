"""Schemas of the hosts view (/v1/hosts)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate


class HostImageSchema(Schema):
    id = fields.String(dump_only=True, required=True)
    snapshotReady = fields.Boolean(dump_only=True, required=True, attribute="snapshot_ready",
                                   metadata={"description": "a memory snapshot of every "
                                                            "SNAPSHOT_SHAPES shape is saved "
                                                            "there (creates restore it)"})


class HostSchema(Schema):
    """A libvirt host as operators see it, read live from libvirt."""

    name = fields.String(dump_only=True, required=True,
                         metadata={"description": "the host's label (`local`: LIBVIRT_URI; "
                                                  "the others: HOSTS)"})
    uri = fields.String(dump_only=True, required=True, metadata={"description": "libvirt URI"})
    state = fields.String(dump_only=True, required=True,
                          validate=validate.OneOf(["UP", "DOWN"]),
                          metadata={"description": "UP: libvirt answered this call"})
    reason = fields.String(dump_only=True, required=True, allow_none=True,
                           metadata={"description": "why DOWN (null when UP)"})
    guestCidr = fields.String(dump_only=True, required=True, attribute="guest_cidr")
    maxVms = fields.Integer(dump_only=True, required=True, attribute="max_vms")
    hostAddresses = fields.List(fields.String(), dump_only=True, required=True,
                                attribute="host_addresses", metadata={
                                    "description": "a remote host's other own addresses "
                                                   "(networks) its HOSTS entry lists: no VM "
                                                   "there reaches them through a wider "
                                                   "allowIps (local: empty, its addresses are "
                                                   "read from its interfaces)"})
    hostname = fields.String(dump_only=True, required=True, allow_none=True)
    hypervisorVersion = fields.String(dump_only=True, required=True, allow_none=True,
                                      attribute="hypervisor_version",
                                      metadata={"description": "QEMU's version"})
    cpus = fields.Integer(dump_only=True, required=True, allow_none=True)
    memoryMb = fields.Integer(dump_only=True, required=True, allow_none=True,
                              attribute="memory_mb")
    freeMemoryMb = fields.Integer(dump_only=True, required=True, allow_none=True,
                                  attribute="free_memory_mb", metadata={
                                      "description": "free, buffers and page cache: what "
                                                     "guests can still get"})
    vms = fields.Integer(dump_only=True, required=True, allow_none=True, metadata={
        "description": "callers' VMs there (not warm-pool VMs or VMs being deleted)"})
    images = fields.List(fields.Nested(HostImageSchema), dump_only=True, required=True,
                         metadata={"description": "images ready there (local: built; a "
                                                  "remote host: shipped and verified)"})


class ShipmentSchema(Schema):
    """An image shipped to a remote host and verified there (SHA-256 of what was sent against
    what the host's libvirt reads back)."""

    imageId = fields.String(dump_only=True, required=True, attribute="image_id")
    host = fields.String(dump_only=True, required=True)
    build = fields.String(dump_only=True, required=True,
                          metadata={"description": "the local build shipped"})
    volumes = fields.Dict(keys=fields.String(), values=fields.Dict(), dump_only=True,
                          required=True, attribute="files", metadata={
                              "description": "volume name (in the host's rds-images pool) "
                                             "-> {sha256, bytes}"})
    seconds = fields.Float(dump_only=True, required=True)
    memorySnapshots = fields.List(fields.String(), dump_only=True, required=True,
                                  attribute="memory_snapshots", metadata={
                                      "description": "the memory snapshots (keys) of the "
                                                     "image saved on that host, one per "
                                                     "SNAPSHOT_SHAPES shape"})
    memorySnapshotError = fields.String(dump_only=True, required=True, allow_none=True,
                                        attribute="memory_snapshot_error", metadata={
                                            "description": "why they could not be made "
                                                           "(VMs there boot instead); null "
                                                           "when they were"})
