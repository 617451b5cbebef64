"""Storage pool calls of :class:`app.virt.connection.Hypervisor` (a mixin).

The service's only pool is a read-only view of its images for ``virsh vol-list``
(:mod:`app.virt.pool_xml`); nothing here creates or deletes a volume.
"""
from __future__ import annotations

import logging
import typing as t

import libvirt

log = logging.getLogger(__name__)


class StoragePoolCalls:
    """Keep the images' pool defined, started and current. Needs the connection's ``_call``."""

    _call: t.Callable[..., t.Any]

    def ensure_storage_pool(self, name: str, xml: str) -> bool:
        """Define (if missing), start and autostart a pool; True if it was defined now."""
        def ensure(conn: t.Any) -> bool:
            created = False
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                log.debug("defining storage pool xml=%s", xml)
                pool = conn.storagePoolDefineXML(xml, 0)
                created = True
            if not pool.isActive():
                pool.create(0)
            if not pool.autostart():
                pool.setAutostart(1)
            return created
        return self._call("ensure storage pool", ensure)

    def refresh_storage_pool(self, name: str) -> None:
        """Re-read the pool's directory (after an image came or went); a missing or inactive
        pool is left alone."""
        def refresh(conn: t.Any) -> None:
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return
                raise
            if pool.isActive():
                pool.refresh(0)
        self._call("refresh storage pool", refresh)
