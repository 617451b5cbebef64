"""A VM's record in its domain's ``<metadata>``: built and parsed here (pure: no I/O, no libvirt).

The VM's API fields live in one ``<rds:vm>`` element under :data:`METADATA_NS`, which makes
libvirt the only store of VM state. :mod:`app.virt.domain_xml` puts the element into a new
domain's XML; :meth:`app.virt.connection.Hypervisor.set_metadata` replaces it on a defined one
(:func:`metadata_xml`). The fields and their XML form come from :data:`app.persist.VM_FIELDS`.
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET

from app.models import VmRecord
from app.persist import VM_FIELDS, to_xml, vm_record_from_xml

METADATA_NS = "https://run-dat-sheesh.dev/xmlns/vm/1"
METADATA_PREFIX = "rds"
ET.register_namespace(METADATA_PREFIX, METADATA_NS)


def metadata_element(record: VmRecord, namespaced: bool = True) -> ET.Element:
    """``<vm>`` with the record's fields (:data:`app.persist.VM_FIELDS`)."""
    return to_xml(record, VM_FIELDS, _q if namespaced else str)


def metadata_xml(record: VmRecord) -> str:
    """The metadata element alone, as ``virDomainSetMetadata`` wants it: without a namespace
    (libvirt adds :data:`METADATA_NS` with the prefix it is given)."""
    element = metadata_element(record, namespaced=False)
    ET.indent(element, space="  ")
    return ET.tostring(element, encoding="unicode")


def replace_metadata(metadata: ET.Element, record: VmRecord) -> None:
    """Put the record into a domain's ``<metadata>``, in place of any record already there
    (a template's or a saved domain's); other applications' elements stay."""
    for old in list(metadata):
        if old.tag == _q("vm"):
            metadata.remove(old)
    metadata.append(metadata_element(record))


@functools.lru_cache(maxsize=1024)
def parse_metadata(xml: str) -> VmRecord | None:
    """The VM record inside a domain's XML, in a bare metadata element, or in the element
    ``virDomainGetMetadata`` gives for :data:`METADATA_NS` (without a namespace, like
    :func:`metadata_xml`); None if absent or invalid.

    Kept per text (every exec reads its VM's record: ~4 % of a worker's time per exec,
    BENCHMARKS.md "Session 15"), so the same text gives the same record object: records are
    frozen, and nobody changes their ``labels`` in place."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    qualify = _q
    if root.tag == "vm":
        vm, qualify = root, str
    else:
        vm = root if root.tag == _q("vm") else root.find(f"metadata/{_q('vm')}")
    if vm is None:
        return None
    try:
        return vm_record_from_xml(vm, qualify)
    except ValueError:
        return None


def _q(tag: str) -> str:
    return f"{{{METADATA_NS}}}{tag}"
