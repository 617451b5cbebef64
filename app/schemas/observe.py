"""Schemas of what operators read: console logs, VM stats, readiness."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


class LogsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tail = fields.Integer(load_default=200, validate=validate.Range(min=0, max=10_000),
                          metadata={"description": "how many of the last lines"})


class ConsoleLogSchema(Schema):
    type = fields.String(metadata={"description": "always 'console' (the serial console)"})
    lines = fields.List(fields.String())
    truncated = fields.Boolean(metadata={"description": "older lines exist that are not "
                                                        "in lines"})
    updatedAt = fields.String(attribute="updated_at", allow_none=True)


class CpuStatsSchema(Schema):
    timeNs = fields.Integer()
    percent = fields.Float(allow_none=True, metadata={
        "description": "over the last 0.25 s; up to vcpus × 100; null unless running"})
    vcpus = fields.Integer()


class MemoryStatsSchema(Schema):
    assignedMb = fields.Integer()
    rssMb = fields.Float(allow_none=True, metadata={"description": "QEMU's resident memory"})


class DiskStatsSchema(Schema):
    readBytes = fields.Integer()
    writeBytes = fields.Integer()
    readOps = fields.Integer()
    writeOps = fields.Integer()


class NetworkStatsSchema(Schema):
    rxBytes = fields.Integer()
    txBytes = fields.Integer()
    rxPackets = fields.Integer()
    txPackets = fields.Integer()


class VmStatsSchema(Schema):
    vmId = fields.String(attribute="vm_id")
    state = fields.String()
    sampledAt = fields.String(attribute="sampled_at")
    uptimeSeconds = fields.Float(attribute="uptime_s", allow_none=True,
                                 metadata={"description": "since the guest was last started "
                                                          "or restored; null unless running"})
    cpu = fields.Nested(CpuStatsSchema)
    memory = fields.Nested(MemoryStatsSchema)
    disk = fields.Nested(DiskStatsSchema)
    network = fields.Nested(NetworkStatsSchema)


class ReadinessSchema(Schema):
    status = fields.String(metadata={"description": "'ready' or 'not ready'"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "libvirt, network, networkPolicy, image: "
                                                  "'ok' or what is wrong"})
