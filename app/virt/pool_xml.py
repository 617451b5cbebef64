"""The images' libvirt storage pool (pure: no I/O, no libvirt).

A ``dir`` pool over ``STORAGE_ROOT/images/volumes``, which holds one link per image's disk
(``<image id>.qcow2``), so ``virsh vol-list rds-images`` shows every image on the host. The
service keeps its images as files and never creates or deletes volumes through libvirt: the
pool is a view for operators (docs/images.md).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

POOL_NAME = "rds-images"


def build_pool_xml(name: str, path: str) -> str:
    root = ET.Element("pool", {"type": "dir"})
    ET.SubElement(root, "name").text = name
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = path
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def build_volume_xml(name: str, size: int) -> str:
    """A raw file volume of ``size`` bytes, allocated as it is written (an upload's target:
    ``virStorageVolUpload`` writes the bytes, whatever their format)."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(size)
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": "raw"})
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def build_overlay_volume_xml(name: str, size_mb: int, backing_path: str) -> str:
    """A qcow2 volume of ``size_mb`` MiB on top of the (qcow2) volume at ``backing_path``: a
    remote host's VM disk (issue 17), made there by libvirt. Only root reads it until libvirt
    hands it to QEMU for the VM's run."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "MiB"}).text = str(size_mb)
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": "qcow2"})
    permissions = ET.SubElement(target, "permissions")
    ET.SubElement(permissions, "mode").text = "0600"
    backing = ET.SubElement(root, "backingStore")
    ET.SubElement(backing, "path").text = backing_path
    ET.SubElement(backing, "format", {"type": "qcow2"})
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def parse_volume_size(xml: str) -> tuple[int, float | None]:
    """A volume's size in bytes (``capacity``: a file volume's length) and its mtime (seconds
    since the epoch; None when the XML has none) from ``virStorageVolGetXMLDesc``, which
    libvirt reads from the file again at each call.

    :raises ValueError: no readable capacity.
    """
    root = ET.fromstring(xml)
    capacity = root.find("capacity")
    if capacity is None or capacity.get("unit", "bytes") != "bytes":
        raise ValueError("the volume XML has no capacity in bytes")
    size = int((capacity.text or "").strip())
    mtime = root.findtext("target/timestamps/mtime")
    try:
        modified = float(mtime) if mtime else None
    except ValueError:
        modified = None
    return size, modified
