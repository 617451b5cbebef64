"""What a domain on a remote host (issue 17) is made of there, shared by its VMs
(:mod:`app.services.remote_vms`) and its memory snapshots (:mod:`app.services.remote_seeds`):
the shipped image's volumes it boots from, and the host-side facts of its domain XML, every
file a volume of that host's pools (a real second host shares no file system with the
manager)."""
from __future__ import annotations

import posixpath

from app.config.hosts import RemoteHost
from app.errors import ImageStateConflict
from app.models import VmRecord
from app.services.vm_files import AUTHORIZED_KEYS, HOST_KEY
from app.virt.domain_xml import BootFiles, DomainParams, kernel_cmdline, port_name

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
