"""What a domain on a remote host (issue 17) is made of there, shared by its VMs
(:mod:`app.services.remote_vms`) and its memory snapshots (:mod:`app.services.remote_seeds`):
the host's VM pool and guest network, the shipped image's volumes it boots from, the
host-side facts of its domain XML (every file a volume of that host's pools: a real second
host shares no file system with the manager), a VM's filter there, and its removal."""
from __future__ import annotations

import contextlib
import ipaddress
import posixpath
import typing as t
import urllib.parse

from app.config import Settings
from app.config.hosts import RemoteHost
from app.errors import ImageStateConflict, VmNotFound
from app.models import VmRecord
from app.services.vm_files import AUTHORIZED_KEYS, HOST_KEY
from app.virt.domain_xml import BootFiles, DomainParams, kernel_cmdline, port_name
from app.virt.network_xml import build_network_xml
from app.virt.nwfilter_xml import build_remote_filter_xml
from app.virt.pool_xml import build_pool_xml

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

VMS_POOL = "rds-vms"  # a remote host's VM volumes


def ensure_host(host: RemoteHost, hypervisor: Hypervisor) -> None:
    """The host's VM pool and its guests' routed network (defined, started, autostarted
    once; checked at each create)."""
    hypervisor.ensure_storage_pool(VMS_POOL, build_pool_xml(VMS_POOL, host.vms_dir),
                                   build=True)
    hypervisor.ensure_network(host.network_name,
                              build_network_xml(host.network_name, host.bridge,
                                                host.guest_cidr, "route"),
                              bridge_present=lambda: True, remove_stale_bridge=_nothing)


def _nothing() -> None:
    """A remote host's bridge is its libvirt's business."""


def filter_xml(settings: Settings, record: VmRecord, host: RemoteHost,
               own_addresses: list[str]) -> str:
    """The VM's filter there: its policy, and the addresses its guest never reaches through a
    wide range: this manager's own (``own_addresses``, ``a.b.c.d/32``, read now), the host's
    as its URI names it (an IP literal; a DNS name is not resolved here, a lookup has no
    timeout) and the host's ``hostAddresses`` (libvirt cannot tell a host's addresses: the
    operator lists them, docs/multihost.md)."""
    hosts = {ipaddress.IPv4Network(address.split("/")[0]) for address in own_addresses}
    with contextlib.suppress(ValueError):  # a DNS name
        hosts.add(ipaddress.IPv4Network(urllib.parse.urlsplit(host.uri).hostname or ""))
    hosts.update(ipaddress.IPv4Network(network) for network in host.host_addresses)
    return build_remote_filter_xml(record.name, record.id, host.guest_cidr,
                                   record.allow_ips, record.outbound_internet,
                                   settings.egress_never_list,
                                   tuple(str(network) for network in sorted(hosts)))


def remove_domain(hypervisor: Hypervisor, vm_id: str) -> None:
    """Power the domain off and undefine it (either already done is fine)."""
    with contextlib.suppress(VmNotFound):
        hypervisor.destroy_domain(vm_id)
    with contextlib.suppress(VmNotFound):
        hypervisor.undefine_domain(vm_id)

BOOT_SUFFIXES = ("qcow2", "vmlinuz", "initrd.img")


def boot_volumes(host: RemoteHost, image_id: str, shipped: set[str]) -> dict[str, str]:
    """The image's volumes in the host's images pool (suffix -> volume name).

    :param shipped: the volumes of that pool.
    :raises ImageStateConflict: one is missing (a custom image has no kernel of its own).
    """
    boot = {suffix: f"{image_id}.{suffix}" for suffix in BOOT_SUFFIXES}
    if not set(boot.values()) <= shipped:
        raise ImageStateConflict(f"image {image_id!r} has no kernel of its own to ship "
                                 f"(a custom image): not available on {host.name} yet")
    return boot


def domain_params(host: RemoteHost, record: VmRecord, disk: str, boot: dict[str, str],
                  accelerator: str, template_cmdline: str, files_dir: str,
                  genid: str = "") -> DomainParams:
    """The host-side facts of ``record``'s domain on ``host``.

    :param disk: the path of its disk volume there.
    :param files_dir: the directory (a pool's) of its key volumes and console log.
    :param genid: a VM generation ID (a clone restored from a memory snapshot needs a new one).
    """
    identity = f"rds.hostname={record.name}"
    if record.guest_ip:
        identity += (f" rds.ip={record.guest_ip}/{host.network.prefixlen} "
                     f"rds.gw={host.gateway}")
    images = host.images_dir
    return DomainParams(
        accelerator=accelerator,
        boot=BootFiles(kernel=posixpath.join(images, boot["vmlinuz"]),
                       initrd=posixpath.join(images, boot["initrd.img"]),
                       cmdline=kernel_cmdline(template_cmdline, accelerator, identity)),
        overlay_path=disk, port=port_name(record.name),
        console_log=posixpath.join(files_dir, f"{record.name}.console.log"),
        identity_socket="",
        fwcfg_files=tuple((suffix, posixpath.join(files_dir, f"{record.name}.{suffix}"))
                          for suffix in (HOST_KEY, AUTHORIZED_KEYS)),
        genid=genid,
        network=host.network_name,
        filter_params=(("IP", record.guest_ip), ("GATEWAY", str(host.gateway)))
        if record.guest_ip else ())
