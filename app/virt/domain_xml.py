"""Domain XML for one VM, built from its template's ``domain.xml`` (pure: no I/O, no libvirt).

Like virt-manager's Cloner, start from the template and change only what a clone needs: name,
uuid, title, metadata, memory, vcpus, boot files, disk, NIC (MAC, the manager's tap), fw_cfg
entries, console log and the accelerator; every VM also gets a virtio balloon with free page
reporting (memory the guest frees goes back to the host). The VM's API fields live in
``<metadata>`` (:mod:`app.virt.metadata_xml`), which makes libvirt the only store of VM state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import xml.etree.ElementTree as ET

from app.models import NAME_PREFIX, ProvisionMode, VmRecord, VmRole
from app.virt.metadata_xml import replace_metadata

FWCFG_PREFIX = "opt/org.rundatsheesh/"
IFNAMSIZ = 16  # Linux interface names: 15 characters and the NUL
IDENTITY_CHANNEL = "org.rundatsheesh.identity"  # virtio-serial port, see app.virt.identity
BUILD_LOG_CHANNEL = "org.rundatsheesh.build-log"  # an image build's output (build VMs only)
SANDBOX_ASLR_WORD = "rds.sandbox_aslr=off"  # TCG only: see kernel_cmdline, sandbox-shell.c


@dataclasses.dataclass(frozen=True)
class BootFiles:
    kernel: str
    initrd: str
    cmdline: str


@dataclasses.dataclass(frozen=True)
class DomainParams:
    """Host-side facts a domain needs beyond the VM record."""

    accelerator: str  # "kvm" or "qemu" (TCG)
    boot: BootFiles
    overlay_path: str
    port: str  # the VM's tap, created by the manager (app.virt.taps); see port_name()
    console_log: str
    identity_socket: str  # host end of the IDENTITY_CHANNEL port (a unix socket libvirt binds)
    fwcfg_files: tuple[tuple[str, str], ...]  # (entry name below FWCFG_PREFIX, host file)
    genid: str = ""  # VM generation ID; "" lets libvirt pick one (a clone needs a new one)
    build: BuildDevices | None = None  # what an image's build VM has besides (None: a VM)
    # A remote host's VM (issue 17): its NIC is on this libvirt network, made and filtered by
    # that host's libvirt (a ``<filterref>`` to the VM's filter with these parameters), and
    # ``port`` names the tap libvirt makes. "" (the local host's): the manager's own tap.
    network: str = ""
    filter_params: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class BuildDevices:
    """The two devices of an image's build VM (app.services.image_builder): its inputs (a tar
    holding the setup script and the uploaded files) as a read-only raw disk ``vdb``, and a
    virtio-serial port whose host end (a unix socket libvirt binds) receives the script's
    output."""

    inputs: str
    log_socket: str


def kernel_cmdline(template_cmdline: str, accelerator: str, extra: str = "") -> str:
    """The guest kernel's command line: the template's, then ``extra``.

    Under TCG ("qemu") the guest's CPU-vulnerability mitigations protect nothing (the emulated
    CPU does not speculate across the guest/host boundary) and cost a lot, so they are turned
    off; under KVM the guest kernel keeps them, whatever the template says. Under TCG the
    sandbox user's processes run without address-space randomization (the word is read by
    guest/build/sandbox-shell.c): QEMU retranslates code that lands at new addresses, ~60 %
    of an exec's guest CPU. Root's keep it; under KVM it costs nothing and stays on.
    """
    words = [word for word in template_cmdline.split()
             if not word.startswith(("mitigations=", "rds.sandbox_aslr="))]
    if accelerator == "qemu":
        words += ["mitigations=off", SANDBOX_ASLR_WORD]
    return " ".join([*words, *extra.split()])


def vm_title(record: VmRecord) -> str:
    """One line an operator reads in ``virsh list --title``."""
    role = "" if record.role is VmRole.SANDBOX else f"{record.role.value} "
    return (f"run-dat-sheesh {role}{record.image_id} {record.cpu} vCPU {record.mem_mb} MiB "
            f"{record.guest_ip}").rstrip()


def build_domain_xml(template_xml: str, record: VmRecord, params: DomainParams) -> str:
    """The complete domain XML for ``record`` on top of the template's XML."""
    root = ET.fromstring(template_xml)
    root.set("type", params.accelerator)
    _set_text(root, "name", record.name)
    _child(root, "uuid", after="name").text = record.id
    genid = _child(root, "genid", after="uuid")
    genid.text = params.genid or None
    _child(root, "title", after="genid").text = vm_title(record)
    _child(root, "description", after="title").text = (
        f"run-dat-sheesh sandbox {record.id} created {record.created_at}; "
        f"managed by the service: delete it through the API")
    replace_metadata(_child(root, "metadata", after="description"), record)
    memory = _child(root, "memory")
    memory.set("unit", "MiB")
    memory.text = str(record.mem_mb)
    for stale in root.findall("currentMemory"):
        root.remove(stale)  # a template copied from `virsh dumpxml` may carry an old value
    _child(root, "vcpu").text = str(record.cpu)
    _set_sysinfo(root, params.fwcfg_files)
    _set_os(root, params.boot)
    _set_features(root, params.accelerator)
    _set_cpu(root, params.accelerator)
    _set_lifecycle_actions(root)
    devices = _child(root, "devices")
    _set_disk(devices, params.overlay_path)
    _set_interface(devices, record, params)
    _set_console_log(devices, params.console_log)
    _set_identity_channel(devices, params.identity_socket)
    _set_memballoon(devices)
    if params.build is not None:
        _add_build_devices(devices, params.build)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def device_fingerprint(template_xml: str, accelerator: str) -> str:
    """A digest of what :func:`build_domain_xml` makes of ``template_xml`` apart from a VM's
    identity (name, uuid, metadata, paths, MAC): machine, CPU and devices.

    A memory snapshot restores only into a domain with the devices it was saved with, so its
    key includes this (:class:`app.services.seeds.SeedStore`): when this module starts giving
    VMs other devices, the old snapshots are no longer found and new ones are saved, instead of
    every restore failing. "" for a template this module cannot build (no disk or NIC).
    """
    record = VmRecord(id="00000000-0000-4000-8000-000000000000", name="rds-fingerprint",
                      cpu=1, mem_mb=256, guest_ip="", mac="52:54:00:00:00:00", allow_ips=(),
                      outbound_internet=False, image_id="", image_path="", disk_size_mb=0,
                      created_at="", provision_mode=ProvisionMode.BOOT, host_key="")
    params = DomainParams(accelerator=accelerator, boot=BootFiles("kernel", "initrd", ""),
                          overlay_path="disk", port="port", console_log="log",
                          identity_socket="identity", fwcfg_files=(("key", "file"),))
    try:
        root = ET.fromstring(build_domain_xml(template_xml, record, params))
    except (ValueError, ET.ParseError):
        return ""
    for tag in ("title", "description", "metadata"):  # words for people and the record
        for element in root.findall(tag):
            root.remove(element)
    return hashlib.sha256(ET.tostring(root)).hexdigest()[:16]


# Builders #################################################################################

def _set_sysinfo(root: ET.Element, files: tuple[tuple[str, str], ...]) -> None:
    for old in root.findall("sysinfo[@type='fwcfg']"):
        root.remove(old)
    if not files:
        return
    sysinfo = ET.Element("sysinfo", {"type": "fwcfg"})
    for name, path in files:
        ET.SubElement(sysinfo, "entry", {"name": FWCFG_PREFIX + name, "file": path})
    _insert_after(root, sysinfo, "vcpu")


def _set_os(root: ET.Element, boot: BootFiles) -> None:
    os_el = _child(root, "os")
    for tag in ("kernel", "initrd", "cmdline", "boot"):
        for old in os_el.findall(tag):
            os_el.remove(old)
    ET.SubElement(os_el, "kernel").text = boot.kernel
    ET.SubElement(os_el, "initrd").text = boot.initrd
    ET.SubElement(os_el, "cmdline").text = boot.cmdline


def _set_features(root: ET.Element, accelerator: str) -> None:
    features = _child(root, "features")
    for old in features.findall("tcg"):
        features.remove(old)
    if accelerator == "qemu":
        # A larger translation-block cache speeds TCG up and, oddly, lowers RSS.
        tcg = ET.SubElement(features, "tcg")
        ET.SubElement(tcg, "tb-cache", {"unit": "MiB"}).text = "64"


def _set_cpu(root: ET.Element, accelerator: str) -> None:
    for old in root.findall("cpu"):
        root.remove(old)
    if accelerator == "kvm":
        cpu = ET.Element("cpu", {"mode": "host-passthrough", "check": "none"})
    else:
        # TCG: emulate the richest CPU QEMU can (Deno/V8 needs SSE4 and friends).
        cpu = ET.Element("cpu", {"mode": "maximum", "check": "none"})
    _insert_after(root, cpu, "features")


# What libvirt does when the guest powers off, resets or crashes. The guest never reboots
# itself on purpose (the sandbox user is not root; stop/start go through the API), so a reset
# means its kernel panicked (the templates boot with panic=-1: reset at once) or it
# triple-faulted. Restarting in place would leave the API reporting RUNNING over a guest that
# lost its memory and is booting again; instead QEMU exits (``-no-reboot``), libvirt reports
# the domain shut off and the API STOPPED within a second, and POST /start boots it cleanly.
LIFECYCLE_ACTIONS = (("on_poweroff", "destroy"), ("on_reboot", "destroy"),
                     ("on_crash", "destroy"))


def _set_lifecycle_actions(root: ET.Element) -> None:
    for tag, _action in LIFECYCLE_ACTIONS:
        for old in root.findall(tag):
            root.remove(old)
    anchor = "clock" if root.find("clock") is not None else "features"
    for tag, action in reversed(LIFECYCLE_ACTIONS):
        element = ET.Element(tag)
        element.text = action
        _insert_after(root, element, anchor)


def _set_disk(devices: ET.Element, overlay_path: str) -> None:
    disk = devices.find("disk[@device='disk']")
    if disk is None:
        raise ValueError("template domain.xml has no <disk device='disk'>")
    for old in disk.findall("source"):
        disk.remove(old)
    source = ET.Element("source", {"file": overlay_path})
    disk.insert(1, source)


def port_name(domain_name: str) -> str:
    """The VM's tap: the domain's name where it fits an interface name (15 characters, as
    ``rds-<short id>`` does), else ``rds-`` and a digest of it (memory-snapshot seeds)."""
    if len(domain_name) <= IFNAMSIZ - 1:
        return domain_name
    return NAME_PREFIX + hashlib.sha256(domain_name.encode()).hexdigest()[:IFNAMSIZ - 5]


def _set_interface(devices: ET.Element, record: VmRecord, params: DomainParams) -> None:
    """The NIC uses the manager's pre-created tap as it is (``managed='no'``): the manager
    filters it and plugs it into the bridge, so the domain carries no ``<source>`` or
    ``<filterref>`` (see :mod:`app.virt.taps`). On a remote host (``params.network``) that
    host's libvirt makes the tap on its network and instantiates the VM's filter on it."""
    nic = devices.find("interface")
    if nic is None:
        raise ValueError("template domain.xml has no <interface>")
    nic.set("type", "network" if params.network else "ethernet")
    for tag in ("mac", "source", "target", "filterref"):
        for old in nic.findall(tag):
            nic.remove(old)
    nic.insert(0, ET.Element("mac", {"address": record.mac}))
    if not params.network:
        nic.insert(1, ET.Element("target", {"dev": params.port, "managed": "no"}))
        return
    nic.insert(1, ET.Element("source", {"network": params.network}))
    nic.insert(2, ET.Element("target", {"dev": params.port}))
    filterref = ET.Element("filterref", {"filter": record.name})
    for name, value in params.filter_params:
        ET.SubElement(filterref, "parameter", {"name": name, "value": value})
    nic.append(filterref)


def _set_identity_channel(devices: ET.Element, socket_path: str) -> None:
    """The virtio-serial port through which a guest restored from a memory snapshot gets its
    identity (:mod:`app.virt.identity`). Every VM has it, so seeds and their clones have the
    same devices; in a seed's saved XML only the socket path changes (the port keeps its
    address), else it goes after the last channel. Without a path (a remote host's VM, whose
    socket the manager cannot reach) libvirt picks one there (virDomainOpenChannel reaches it)."""
    source = {"mode": "bind", "path": socket_path} if socket_path else {"mode": "bind"}
    for channel in devices.findall("channel"):
        if channel.find(f"target[@name='{IDENTITY_CHANNEL}']") is not None:
            for old in channel.findall("source"):
                channel.remove(old)
            channel.insert(0, ET.Element("source", source))
            return
    channel = ET.Element("channel", {"type": "unix"})
    ET.SubElement(channel, "source", source)
    ET.SubElement(channel, "target", {"type": "virtio", "name": IDENTITY_CHANNEL})
    children = list(devices)
    last = max((i for i, child in enumerate(children) if child.tag == "channel"), default=None)
    devices.insert(len(children) if last is None else last + 1, channel)


def _set_memballoon(devices: ET.Element) -> None:
    """A virtio balloon with free page reporting: the guest's driver (virtio_balloon) reports
    pages it freed, and QEMU discards them, so an idle guest gives back what it no longer
    uses. Nothing is ever inflated. A seed's saved balloon keeps its PCI address."""
    balloon = devices.find("memballoon")
    if balloon is None:
        balloon = ET.SubElement(devices, "memballoon")
    if balloon.get("model") != "virtio":
        for child in list(balloon):
            balloon.remove(child)
    balloon.set("model", "virtio")
    balloon.set("freePageReporting", "on")


def _add_build_devices(devices: ET.Element, build: BuildDevices) -> None:
    """The inputs disk after the VM's own disk, the log port after the last channel."""
    disk = ET.Element("disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(disk, "source", {"file": build.inputs})
    ET.SubElement(disk, "target", {"dev": "vdb", "bus": "virtio"})
    ET.SubElement(disk, "readonly")
    children = list(devices)
    own = next(i for i, child in enumerate(children) if child.tag == "disk")
    devices.insert(own + 1, disk)
    channel = ET.Element("channel", {"type": "unix"})
    ET.SubElement(channel, "source", {"mode": "bind", "path": build.log_socket})
    ET.SubElement(channel, "target", {"type": "virtio", "name": BUILD_LOG_CHANNEL})
    children = list(devices)
    last = max(i for i, child in enumerate(children) if child.tag == "channel")
    devices.insert(last + 1, channel)


def _set_console_log(devices: ET.Element, path: str) -> None:
    """Log the serial console to ``path``; a saved domain's XML repeats that ``<log>`` under
    ``<console>``, which must point to the same file."""
    serial = devices.find("serial")
    if serial is None:
        return
    for port in [serial, *devices.findall("console")]:
        had_log = port.find("log") is not None
        for old in port.findall("log"):
            port.remove(old)
        if port is serial or had_log:
            port.insert(0, ET.Element("log", {"file": path, "append": "off"}))


# Helpers ##################################################################################

def _child(root: ET.Element, tag: str, after: str | None = None) -> ET.Element:
    element = root.find(tag)
    if element is None:
        element = ET.Element(tag)
        if after is None:
            root.append(element)
        else:
            _insert_after(root, element, after)
    return element


def _set_text(root: ET.Element, tag: str, text: str) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.Element(tag)
        root.insert(0, element)
    element.text = text


def _insert_after(root: ET.Element, element: ET.Element, after: str) -> None:
    children = list(root)
    for index, child in enumerate(children):
        if child.tag == after:
            root.insert(index + 1, element)
            return
    root.append(element)
