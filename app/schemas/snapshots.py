"""Schemas of the snapshot resource, and the snapshot fields of a VM create body."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema


class SnapshotSchema(Schema):
    """A disk snapshot: all fields always present (``required``)."""

    id = fields.String(dump_only=True, required=True)
    kind = fields.String(dump_only=True, required=True, metadata={
        "description": "always 'user_overlay': a copy of the VM's disk"})
    createdAt = fields.String(dump_only=True, required=True, attribute="created_at")
    cpu = fields.Integer(dump_only=True, required=True,
                         metadata={"description": "of the source VM"})
    memMb = fields.Integer(dump_only=True, required=True, attribute="mem_mb")
    imageId = fields.String(dump_only=True, required=True, attribute="image_id",
                            metadata={"description": "template the disk is based on"})
    sourceVmId = fields.String(dump_only=True, required=True, attribute="source_vm_id",
                               metadata={"description": "VM it was taken from (may be gone)"})
    hasOverlay = fields.Boolean(dump_only=True, required=True, attribute="has_overlay")


class SnapshotRefSchema(Schema):
    """``snapshotId`` (alias ``userOverlaySnapshotId``) of ``POST /v1/vms``: the new VM's disk,
    and so ``/workspace``, starts from that snapshot. Loads as ``snapshotId`` only."""

    snapshotId = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1),
        metadata={"description": "start the VM's disk from this snapshot (extension); the "
                                 "VM gets the snapshot's template. Unknown snapshot: 404"})
    userOverlaySnapshotId = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1),
        metadata={"description": "alias of snapshotId"})

    @validates_schema
    def _one_snapshot(self, data: dict, **_kwargs) -> None:
        given = {data.get("snapshotId"), data.get("userOverlaySnapshotId")} - {None}
        if len(given) > 1:
            raise ValidationError("snapshotId and userOverlaySnapshotId name different "
                                  "snapshots; give one of them", "snapshotId")

    @post_load
    def _merge_alias(self, data: dict, **_kwargs) -> dict:
        alias = data.pop("userOverlaySnapshotId", None)
        data["snapshotId"] = data.get("snapshotId") or alias
        return data
