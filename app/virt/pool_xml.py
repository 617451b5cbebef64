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
