"""A VM's files on the host and the domain XML that points at them.

``STORAGE_ROOT/vms/<name>/`` holds the VM's overlay disk, its own SSH host key and the manager's
public key (both served to the guest through fw_cfg), its console log, and ``qemu/`` where QEMU
binds the VM's identity socket (:mod:`app.virt.qemu_access`). A memory-snapshot seed keeps the
same layout in its build directory.
"""
from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.models import Template, VmRecord
from app.services.guests import ManagerKey
from app.services.templates import ImageBuild, TemplateCatalog
from app.sshkeys import KeyPair, write_private
from app.virt.domain_xml import (BootFiles, BuildDevices, DomainParams, build_domain_xml,
                                 kernel_cmdline, port_name)
from app.virt.nwfilter_xml import build_filter_xml
from app.virt.qemu_access import QEMU_WRITABLE

DISK = "disk.qcow2"
HOST_KEY = "ssh_host_ed25519_key"
AUTHORIZED_KEYS = "authorized_keys"
CONSOLE_LOG = "console.log"
IDENTITY_SOCKET = f"{QEMU_WRITABLE}/identity.sock"  # see app.virt.identity
BUILD_LOG_SOCKET = f"{QEMU_WRITABLE}/build-log.sock"  # an image build VM's output


class VmFiles:
    """Writes a VM's key files and composes its domain and filter XML."""

    def __init__(self, settings: Settings, templates: TemplateCatalog, domain_type: str,
                 manager_key: ManagerKey) -> None:
        self.settings = settings
        self.templates = templates
        self.domain_type = domain_type
        self.manager_key = manager_key

    def directory(self, name: str) -> Path:
        return self.settings.vms_dir / name

    def write_keys(self, vm_dir: Path, host_key: KeyPair) -> None:
        """The VM's own host key and the manager's public key, served to the guest by fw_cfg."""
        write_private(vm_dir / HOST_KEY, host_key.private_openssh)
        (vm_dir / AUTHORIZED_KEYS).write_text(self.manager_key.pair().public_openssh + "\n")

    def domain_xml(self, record: VmRecord, base_xml: str, build: ImageBuild, vm_dir: Path,
                   genid: str = "", *, template: Template | None = None,
                   inputs: Path | None = None) -> str:
        """The domain XML of ``record``, built on the template's XML or on a seed's saved XML
        (then only the VM's identity changes and the devices stay exactly as saved).

        :param template: the VM's template (looked up by ``record.image_id`` when None).
        :param inputs: an image build VM's inputs (app.services.image_builder): its domain
            gets the inputs disk and the build-log port too.
        """
        template = template or self.templates.get(record.image_id)
        identity = f"rds.hostname={record.name}"
        if record.guest_ip:
            identity += (f" rds.ip={record.guest_ip}/{self.settings.network.prefixlen} "
                         f"rds.gw={self.settings.gateway_ip}")
        cmdline = kernel_cmdline(template.kernel_cmdline, self.domain_type, identity)
        params = DomainParams(
            accelerator=self.domain_type,
            boot=BootFiles(kernel=str(build.kernel), initrd=str(build.initrd), cmdline=cmdline),
            overlay_path=str(vm_dir / DISK),
            port=port_name(record.name),
            console_log=str(vm_dir / CONSOLE_LOG),
            identity_socket=str(vm_dir / IDENTITY_SOCKET),
            fwcfg_files=((HOST_KEY, str(vm_dir / HOST_KEY)),
                         (AUTHORIZED_KEYS, str(vm_dir / AUTHORIZED_KEYS))),
            genid=genid,
            build=BuildDevices(inputs=str(inputs), log_socket=str(vm_dir / BUILD_LOG_SOCKET))
            if inputs is not None else None,
        )
        return build_domain_xml(base_xml, record, params)

    def filter_xml(self, record: VmRecord) -> str:
        return build_filter_xml(record.name, record.id, self.settings.network_cidr,
                                str(self.settings.gateway_ip))
