"""Making a remote VM's parts on its host (:mod:`app.services.remote_vms`): quota, address
reservation and name under this manager's allocation lock for that host, then its filter,
key volumes, disk and domain, each undone by the create's
:class:`~app.services.teardown.Cleanup` if a later step fails; and removing its volumes again.
"""
from __future__ import annotations

import io
import posixpath
import typing as t
import uuid
from pathlib import Path

from app.clock import now_iso
from app.config import Settings
from app.config.hosts import RemoteHost
from app.errors import QuotaExceeded
from app.models import ProvisionMode, VmPhase, VmRecord, VmRole
from app.services.addresses import allocation_lock
from app.services.guests import ManagerKey
from app.services.ownership import check_quota
from app.services.records import VmRecords
from app.services.remote_addresses import RemoteAddresses
from app.services.remote_domains import (VMS_POOL, boot_volumes, domain_params, filter_xml,
                                         remove_domain)
from app.services.remote_seeds import RESTORE_SUFFIX, RemoteSeed, RemoteSeeds
from app.services.teardown import Cleanup
from app.services.vm_files import AUTHORIZED_KEYS, HOST_KEY
from app.sshkeys import generate_keypair
from app.virt.domain_xml import build_domain_xml
from app.virt.pool_xml import POOL_NAME, build_overlay_volume_xml

if t.TYPE_CHECKING:
    from app.services.provisioner import CreatePlan
    from app.virt.connection import Hypervisor

VOLUME_SUFFIXES = ("qcow2", HOST_KEY, AUTHORIZED_KEYS, "console.log", RESTORE_SUFFIX[1:])


class RemoteProvisioning:
    """:param lock_path: this manager's allocation lock file for a host, by name.
    :param own_addresses: this manager's IPv4 addresses (``a.b.c.d/32``), for the filters."""

    def __init__(self, settings: Settings, addresses: RemoteAddresses, seeds: RemoteSeeds,
                 manager_key: ManagerKey, domain_type: str,
                 lock_path: t.Callable[[str], Path],
                 own_addresses: t.Callable[[], list[str]]) -> None:
        self.settings = settings
        self.addresses = addresses
        self.seeds = seeds
        self.manager_key = manager_key
        self.domain_type = domain_type
        self.lock_path = lock_path
        self.own_addresses = own_addresses

    def provision(self, plan: CreatePlan, host: RemoteHost, hypervisor: Hypervisor,
                   seed: RemoteSeed | None,
                   cleanup: Cleanup, lock_timeout: float) -> tuple[VmRecord, str, bytes, int]:
        """Take quota, address and name; make the filter, volumes and domain there, each
        added to ``cleanup`` as it is made.

        :returns: the record, its domain XML, its private host key and how many creates are
            in flight on that host (this one included).
        """
        spec, template = plan.spec, plan.template
        boot = boot_volumes(host, template.id, set(hypervisor.list_volumes(POOL_NAME)))
        base_xml = template.domain_xml if seed is None else \
            self.seeds.header(hypervisor, seed).xml
        host_key = generate_keypair()
        with allocation_lock(self.lock_path(host.name), lock_timeout,
                             busy=f"host {host.name} is busy allocating VMs; retry"):
            domains = VmRecords(hypervisor).all()
            others = [record for record, _info in domains]
            deleting = sum(1 for other in others if other.phase is VmPhase.DELETING)
            creating = 1 + sum(1 for other in others if other.phase is VmPhase.CREATING)
            limit = host.max_vms or self.settings.max_vms
            if len(others) - deleting >= limit:
                raise QuotaExceeded(f"VM quota of host {host.name} reached ({limit} VMs)")
            check_quota(spec, others)
            held = self.addresses.reserve(host, hypervisor,
                                          [other.guest_ip for other in others],
                                          {info.name for _record, info in domains})
            cleanup.add("address reservation", self.addresses.release, host, hypervisor,
                        held.entry)
            # Another manager's create holds its reservation before its domain exists: counted
            # with this one's, maxVms holds across managers (two racing for the last place
            # both back off, 429; never one too many).
            going = {other.name for other in others if other.phase is VmPhase.DELETING}
            held_now = {entry.name for entry in hypervisor.dhcp_hosts(host.network_name)}
            if len((held_now | {other.name for other in others}) - going) > limit:
                raise QuotaExceeded(f"VM quota of host {host.name} reached ({limit} VMs, "
                                    f"with creates of other managers under way)")
            vm_id, name = held.vm_id, held.name
            record = VmRecord(
                id=vm_id, name=name, cpu=spec.cpu, mem_mb=spec.mem_mb, guest_ip=str(held.address),
                mac=held.entry.mac, allow_ips=spec.allow_ips,
                outbound_internet=spec.outbound_internet, image_id=template.id,
                image_path=posixpath.join(host.images_dir, boot["qcow2"]),
                disk_size_mb=plan.disk_size_mb, created_at=now_iso(),
                provision_mode=ProvisionMode.BOOT if seed is None else ProvisionMode.SNAPSHOT,
                host_key=host_key.public_openssh, phase=VmPhase.CREATING, role=VmRole.SANDBOX,
                host=host.name, seed=seed.key if seed else "", **plan.caller_fields())
            cleanup.add("filter", hypervisor.undefine_filter, name)
            hypervisor.define_filter(self.filter_xml(record, host))
            cleanup.add("volumes", remove_volumes, hypervisor, name)
            for suffix, data in ((HOST_KEY, host_key.private_openssh.encode()),
                                 (AUTHORIZED_KEYS,
                                  (self.manager_key.pair().public_openssh + "\n").encode())):
                hypervisor.upload_volume(VMS_POOL, f"{name}.{suffix}", len(data),
                                         lambda data=data: io.BytesIO(data).read,
                                         timeout=hypervisor.timeout)
            disk = hypervisor.create_volume(VMS_POOL, build_overlay_volume_xml(
                f"{name}.qcow2", plan.disk_size_mb,
                record.image_path if seed is None else seed.disk))
            xml = build_domain_xml(base_xml, record, domain_params(
                host, record, disk, boot, self.domain_type, template.kernel_cmdline,
                host.vms_dir, genid=str(uuid.uuid4()) if seed else ""))
            cleanup.add("domain", remove_domain, hypervisor, vm_id)
            hypervisor.define_domain(xml)
            self.addresses.confirm(host, hypervisor, held.entry)
        return record, xml, host_key.private_openssh.encode(), creating

    def filter_xml(self, record: VmRecord, host: RemoteHost) -> str:
        return filter_xml(self.settings, record, host, self.own_addresses())


def remove_volumes(hypervisor: Hypervisor, name: str) -> None:
    """The VM's volumes on its host, gone (those that are there)."""
    # Listed after a refresh: the console log virtlogd made, and those it rotated away.
    rotated = [volume for volume in hypervisor.list_volumes(VMS_POOL)
               if volume.startswith(f"{name}.console.log.")]
    for volume in [f"{name}.{suffix}" for suffix in VOLUME_SUFFIXES] + rotated:
        hypervisor.delete_volume(VMS_POOL, volume)
