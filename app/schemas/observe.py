"""Schemas of what operators read: console logs, VM stats, readiness."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


class LogsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tail = fields.Integer(load_default=200, validate=validate.Range(min=0, max=10_000),
                          metadata={"description": "how many of the last lines"})


class ConsoleLogSchema(Schema):
    type = fields.String(required=True,
                         metadata={"description": "always 'console' (the serial console)"})
    lines = fields.List(fields.String(), required=True)
    truncated = fields.Boolean(required=True, metadata={
        "description": "older lines exist that are not in lines"})
    updatedAt = fields.String(required=True, attribute="updated_at", allow_none=True)


class CpuStatsSchema(Schema):
    timeNs = fields.Integer(required=True)
    percent = fields.Float(required=True, allow_none=True, metadata={
        "description": "over the last 0.25 s; up to vcpus × 100; null unless running"})
    vcpus = fields.Integer(required=True)


class MemoryStatsSchema(Schema):
    assignedMb = fields.Integer(required=True)
    rssMb = fields.Float(required=True, allow_none=True,
                         metadata={"description": "QEMU's resident memory"})


class DiskStatsSchema(Schema):
    readBytes = fields.Integer(required=True)
    writeBytes = fields.Integer(required=True)
    readOps = fields.Integer(required=True)
    writeOps = fields.Integer(required=True)


class NetworkStatsSchema(Schema):
    rxBytes = fields.Integer(required=True)
    txBytes = fields.Integer(required=True)
    rxPackets = fields.Integer(required=True)
    txPackets = fields.Integer(required=True)


class VmStatsSchema(Schema):
    vmId = fields.String(required=True, attribute="vm_id")
    state = fields.String(required=True)
    sampledAt = fields.String(required=True, attribute="sampled_at")
    uptimeSeconds = fields.Float(required=True, attribute="uptime_s", allow_none=True,
                                 metadata={"description": "since the guest was last started "
                                                          "or restored; null unless running"})
    cpu = fields.Nested(CpuStatsSchema, required=True)
    memory = fields.Nested(MemoryStatsSchema, required=True)
    disk = fields.Nested(DiskStatsSchema, required=True)
    network = fields.Nested(NetworkStatsSchema, required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True, metadata={"description": "'ready' or 'not ready'"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                         metadata={"description": "libvirt, network, networkPolicy, image: "
                                                  "'ok' or what is wrong"})


class ExecLogsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    type = fields.String(load_default=None, validate=validate.OneOf(["exec", "run-ts",
                                                                     "run-js"]))


class ExecLogSchema(Schema):
    id = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["exec", "run-ts", "run-js"]))
    command = fields.String(required=True, metadata={
        "description": "the command, or the first 4 KiB of the code (or 'path: ...')"})
    exitCode = fields.Integer(required=True, attribute="exit_code")
    timedOut = fields.Boolean(required=True, attribute="timed_out")
    durationMs = fields.Integer(required=True, attribute="duration_ms")
    startedAt = fields.String(required=True, attribute="started_at")
    stdoutPreview = fields.String(required=True, attribute="stdout_preview",
                                  metadata={"description": "the first 4 KiB"})
    stderrPreview = fields.String(required=True, attribute="stderr_preview",
                                  metadata={"description": "the first 4 KiB"})
    actor = fields.String(required=True, metadata={
        "description": "who ran it: 'api-key' or 'session:<email>'"})
