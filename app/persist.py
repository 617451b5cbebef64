"""Persisted fields, declared once per record type (pure: stdlib and models only).

A record that the service keeps outside memory (a VM in its domain's ``<metadata>``, a disk
snapshot in ``snapshot.json``, a memory snapshot in ``seed.json``) is described by one table of
:class:`Field`: its name on disk, the dataclass attribute, and how the value is written and
read. The writers and readers of every format are derived from the table, so adding a field
(``labels``, ``expiresAt``, ``createdBy``) is one line (the idea of virt-manager's
``XMLProperty``).
"""
from __future__ import annotations

import dataclasses
import enum
import typing as t
import xml.etree.ElementTree as ET

from app.models import (ImageRecord, ImageState, ProvisionMode, Snapshot, VmPhase, VmRecord,
                        VmRole)

R = t.TypeVar("R")
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One persisted field.

    :param key: its name on disk (camelCase, as in the API).
    :param attr: the dataclass attribute.
    :param kind: ``str``, ``int``, ``bool``, an ``Enum`` class, ``tuple`` (of strings) or
        ``dict`` (string to string; in XML ``<item key="k">v</item>`` entries).
    :param default: the value when the field is absent on disk (required when not given).
    :param omit_default: leave the field out when it holds its default (optional fields that
        older records never had).
    :param item: the element name of one entry of a ``tuple`` field in XML.
    """

    key: str
    attr: str
    kind: t.Any = str
    default: t.Any = _REQUIRED
    omit_default: bool = False
    item: str = "item"

    def missing(self) -> t.Any:
        """The value of an absent field (a fresh copy: records never share a dict)."""
        return dict(self.default) if isinstance(self.default, dict) else self.default

    def to_text(self, value: t.Any) -> str:
        if self.kind is bool:
            return "true" if value else "false"
        if isinstance(value, enum.Enum):
            return str(value.value)
        return str(value)

    def from_text(self, text: str) -> t.Any:
        """:raises ValueError: when ``text`` is no valid value of the field's kind."""
        if self.kind is bool:
            if text not in ("true", "false"):
                raise ValueError(f"{self.key}: {text!r} is not true or false")
            return text == "true"
        if self.kind is int:
            return int(text)
        if isinstance(self.kind, type) and issubclass(self.kind, enum.Enum):
            return self.kind(text)
        return text

    def from_json(self, value: t.Any) -> t.Any:
        if self.kind is dict:
            return {str(key): str(item) for key, item in value.items()}
        if self.kind is tuple:
            return tuple(str(item) for item in value)
        if self.kind is bool:
            return bool(value)
        return self.from_text(str(value))

    def to_json(self, value: t.Any) -> t.Any:
        if self.kind is dict:
            return dict(value)
        if self.kind is tuple:
            return list(value)
        if self.kind in (bool, int):
            return value
        return self.to_text(value)


Table = tuple[Field, ...]

VM_FIELDS: Table = (
    Field("id", "id"),
    Field("name", "name"),
    Field("cpu", "cpu", int),
    Field("memMb", "mem_mb", int),
    Field("guestIp", "guest_ip"),
    Field("mac", "mac"),
    Field("outboundInternet", "outbound_internet", bool),
    Field("imageId", "image_id"),
    Field("imagePath", "image_path"),
    Field("diskSizeMb", "disk_size_mb", int),
    Field("createdAt", "created_at"),
    Field("provisionMode", "provision_mode", ProvisionMode, default=ProvisionMode.BOOT),
    Field("hostKey", "host_key"),
    Field("phase", "phase", VmPhase, default=VmPhase.STARTING),
    Field("role", "role", VmRole, default=VmRole.SANDBOX),
    Field("seed", "seed", default=""),
    Field("snapshotId", "snapshot_id", default="", omit_default=True),
    Field("allowIps", "allow_ips", tuple, default=(), item="ip"),
    Field("labels", "labels", dict, default={}, omit_default=True, item="label"),
    Field("ttlSeconds", "ttl_s", int, default=0, omit_default=True),
    Field("expiresAt", "expires_at", default="", omit_default=True),
    Field("idleStopSeconds", "idle_stop_s", int, default=0, omit_default=True),
    Field("startedAt", "started_at", default="", omit_default=True),
    Field("createdBy", "created_by", default="", omit_default=True),
    Field("ownerKey", "owner_key", default="", omit_default=True),
    Field("host", "host", default="", omit_default=True),
)

SNAPSHOT_FIELDS: Table = (
    Field("id", "id"),
    Field("kind", "kind", default="user_overlay"),
    Field("createdAt", "created_at"),
    Field("cpu", "cpu", int),
    Field("memMb", "mem_mb", int),
    Field("imageId", "image_id"),
    Field("sourceVmId", "source_vm_id"),
    Field("hasOverlay", "has_overlay", bool, default=True),
    Field("imagePath", "image_path"),
    Field("diskSizeMb", "disk_size_mb", int),
    Field("createdBy", "created_by", default="", omit_default=True),
    Field("ownerKey", "owner_key", default="", omit_default=True),
)

SEED_FIELDS: Table = (
    Field("templateId", "template_id"),
    Field("cpu", "cpu", int),
    Field("memMb", "mem_mb", int),
    Field("diskSizeMb", "disk_size_mb", int),
    Field("imagePath", "image_path"),
    Field("createdAt", "created_at", default=""),
)

IMAGE_FIELDS: Table = (
    Field("id", "id"),
    Field("description", "description", default=""),
    Field("base", "base"),
    Field("template", "template"),
    Field("state", "state", ImageState),
    Field("createdAt", "created_at"),
    Field("allowIps", "allow_ips", tuple, default=()),
    Field("outboundInternet", "outbound_internet", bool, default=False),
    Field("timeoutSeconds", "timeout_s", int, default=900),
    Field("cpu", "cpu", int, default=1),
    Field("memMb", "mem_mb", int, default=1024),
    Field("diskSizeMb", "disk_size_mb", int, default=0),
    Field("awaiting", "awaiting", tuple, default=()),
    Field("hasFiles", "has_files", bool, default=False),
    Field("diskFormat", "disk_format", default=""),
    Field("reason", "reason", default=""),
    Field("attempts", "attempts", int, default=0),
    Field("startedAt", "started_at", default=""),
    Field("finishedAt", "finished_at", default=""),
    Field("buildVm", "build_vm", default=""),
    Field("build", "build", default=""),
)


# JSON side files ##########################################################################

def to_json(record: t.Any, table: Table) -> dict[str, t.Any]:
    """The record's fields as a JSON object."""
    out = {}
    for field in table:
        value = getattr(record, field.attr)
        if not (field.omit_default and value == field.default):
            out[field.key] = field.to_json(value)
    return out


def from_json(cls: type[R], table: Table, data: t.Mapping[str, t.Any], **extra: t.Any) -> R:
    """A record of ``cls`` from a JSON object; ``extra`` fills attributes not on disk.

    :raises ValueError: a required field is missing or a value is invalid.
    """
    values = dict(extra)
    for field in table:
        if field.key in data:
            values[field.attr] = field.from_json(data[field.key])
        elif field.default is _REQUIRED:
            raise ValueError(f"{field.key} is missing")
        else:
            values[field.attr] = field.missing()
    return cls(**values)


# XML (domain metadata) ####################################################################

def to_xml(record: t.Any, table: Table, tag: t.Callable[[str], str] = str) -> ET.Element:
    """The record as ``<vm><key>value</key>...</vm>`` (``tag`` qualifies names)."""
    root = ET.Element(tag("vm"))
    for field in table:
        value = getattr(record, field.attr)
        if field.omit_default and value == field.default:
            continue
        element = ET.SubElement(root, tag(field.key))
        if field.kind is tuple:
            for entry in value:
                ET.SubElement(element, tag(field.item)).text = str(entry)
        elif field.kind is dict:
            for key, entry in value.items():
                ET.SubElement(element, tag(field.item), key=key).text = entry
        else:
            element.text = field.to_text(value)
    return root


def from_xml(cls: type[R], table: Table, element: ET.Element,
             tag: t.Callable[[str], str] = str) -> R:
    """A record of ``cls`` from an element :func:`to_xml` wrote.

    :raises ValueError: a required field is missing or a value is invalid.
    """
    values = {}
    for field in table:
        child = element.find(tag(field.key))
        if child is None:
            if field.default is _REQUIRED:
                raise ValueError(f"{field.key} is missing")
            values[field.attr] = field.missing()
        elif field.kind is tuple:
            values[field.attr] = tuple(item.text or "" for item in child.iterfind(tag(field.item)))
        elif field.kind is dict:
            values[field.attr] = {item.get("key", ""): item.text or ""
                                  for item in child.iterfind(tag(field.item))}
        elif not (child.text or "") and field.default is not _REQUIRED and field.kind is not str:
            values[field.attr] = field.missing()
        else:
            values[field.attr] = field.from_text(child.text or "")
    return cls(**values)


# The record types' own shortcuts ##########################################################

def vm_record_from_xml(element: ET.Element, tag: t.Callable[[str], str] = str) -> VmRecord:
    return from_xml(VmRecord, VM_FIELDS, element, tag)


def snapshot_from_json(data: t.Mapping[str, t.Any], disk_path: str) -> Snapshot:
    return from_json(Snapshot, SNAPSHOT_FIELDS, data, disk_path=disk_path)


def image_from_json(data: t.Mapping[str, t.Any]) -> ImageRecord:
    return from_json(ImageRecord, IMAGE_FIELDS, data)
