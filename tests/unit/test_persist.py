"""Persisted fields are declared once (app.persist): each table's writers and readers agree,
optional fields stay optional, and records written by earlier versions still read."""
from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from app.models import ProvisionMode, Snapshot, VmPhase, VmRole
from app.persist import (SEED_FIELDS, SNAPSHOT_FIELDS, VM_FIELDS, from_json, from_xml, to_json,
                         to_xml)
from app.services.seeds import Seed
from tests.unit.fakes import record


def test_every_vm_record_field_is_persisted():
    persisted = {field.attr for field in VM_FIELDS}
    assert persisted == {field.name for field in dataclasses.fields(record(1))}


@pytest.mark.parametrize("changes", [{}, {"snapshot_id": "s-1", "allow_ips": ("10.0.0.0/8",),
                                          "outbound_internet": True, "role": VmRole.POOL,
                                          "phase": VmPhase.CREATING,
                                          "provision_mode": ProvisionMode.POOL}])
def test_a_vm_record_survives_xml(changes):
    original = dataclasses.replace(record(7), **changes)
    element = ET.fromstring(ET.tostring(to_xml(original, VM_FIELDS)))
    assert from_xml(type(original), VM_FIELDS, element) == original


def test_an_optional_field_is_left_out_when_empty_and_read_back_as_its_default():
    element = to_xml(record(1), VM_FIELDS)
    assert element.find("snapshotId") is None
    assert from_xml(type(record(1)), VM_FIELDS, element).snapshot_id == ""


def test_records_of_earlier_versions_read_with_defaults():
    element = to_xml(record(1), VM_FIELDS)
    for key in ("phase", "role", "seed", "provisionMode"):
        element.remove(element.find(key))
    read = from_xml(type(record(1)), VM_FIELDS, element)
    assert (read.phase, read.role, read.seed, read.provision_mode) == (
        VmPhase.STARTING, VmRole.SANDBOX, "", ProvisionMode.BOOT)


@pytest.mark.parametrize("broken", [("cpu", "two"), ("outboundInternet", "maybe"),
                                    ("phase", "dancing")])
def test_an_invalid_value_is_refused(broken):
    element = to_xml(record(1), VM_FIELDS)
    element.find(broken[0]).text = broken[1]
    with pytest.raises(ValueError):
        from_xml(type(record(1)), VM_FIELDS, element)


def test_a_missing_required_field_is_refused():
    element = to_xml(record(1), VM_FIELDS)
    element.remove(element.find("hostKey"))
    with pytest.raises(ValueError, match="hostKey"):
        from_xml(type(record(1)), VM_FIELDS, element)


def test_snapshot_json_round_trips_and_matches_what_earlier_versions_wrote():
    snapshot = Snapshot(id="s", created_at="2024-01-01T00:00:00.000Z", cpu=1, mem_mb=256,
                        image_id="default", source_vm_id="v", image_path="/i/disk.qcow2",
                        disk_size_mb=4096, disk_path="/s/disk.qcow2")
    data = json.loads(json.dumps(to_json(snapshot, SNAPSHOT_FIELDS)))
    assert data == {"id": "s", "kind": "user_overlay", "createdAt": "2024-01-01T00:00:00.000Z",
                    "cpu": 1, "memMb": 256, "imageId": "default", "sourceVmId": "v",
                    "hasOverlay": True, "imagePath": "/i/disk.qcow2", "diskSizeMb": 4096}
    assert from_json(Snapshot, SNAPSHOT_FIELDS, data, disk_path="/s/disk.qcow2") == snapshot


def test_seed_json_round_trips(tmp_path):
    seed = Seed(key="k", path=tmp_path, template_id="default", cpu=1, mem_mb=256,
                disk_size_mb=4096, image_path="/i", created_at="2024-01-01T00:00:00.000Z")
    data = to_json(seed, SEED_FIELDS)
    assert from_json(Seed, SEED_FIELDS, data, key="k", path=tmp_path) == seed
