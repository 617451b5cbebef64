"""The guest side of an image build: the build VM's inputs, its setup script run as root,
the seal that follows, and the power-off.

Everything runs through qemu-guest-agent (``guest-exec`` as root; the sandbox user's SSH is
no way to root, by design), with the build's inputs on a read-only raw disk (``/dev/vdb``: a
tar of ``setup`` and ``files/``) and all output on the virtio-serial port
``org.rundatsheesh.build-log``, which a :class:`~app.virt.guest_port.PortReader` copies into
the build log as it comes. The guest contract is in docs/images.md.
"""
from __future__ import annotations

import contextlib
import tarfile
import threading
import time
import typing as t
from pathlib import Path

from app.errors import HypervisorError, VmNotFound
from app.services.image_store import BuildLog
from app.virt.domain_xml import BUILD_LOG_CHANNEL
from app.virt.guest_port import PortReader

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

AGENT_TIMEOUT_S = 30.0
POLL_S = 1.0
SEAL_TIMEOUT_S = 300.0
PORT = f"/dev/virtio-ports/{BUILD_LOG_CHANNEL}"
WORK = "/run/rds-build"
INPUTS_DEVICE = "/dev/vdb"
# Exit codes of the runner itself (before the setup script runs).
NO_LOG_PORT, NO_INPUTS = 250, 251

# Runs as root through the guest agent: output to the log port, inputs unpacked, then the
# setup script in the uploaded files' directory: with its own interpreter when it starts with
# "#!", else with bash -e (the first failing command fails the build).
RUNNER = f"""exec >{PORT} 2>&1 </dev/null || exit {NO_LOG_PORT}
rm -rf {WORK} && mkdir -m 700 {WORK} && tar -xf {INPUTS_DEVICE} -C {WORK} || {{
    echo "rds-build: cannot read the build inputs from {INPUTS_DEVICE}"; exit {NO_INPUTS}; }}
cd {WORK}/files || exit {NO_INPUTS}
export HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \\
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$(head -c 2 {WORK}/setup)" = '#!' ]; then
    chmod 700 {WORK}/setup && exec {WORK}/setup
fi
exec /bin/bash -e {WORK}/setup
"""

# After a successful setup: what no image may carry (docs/images.md, "What the build
# changes"): the build's files, setuid/setgid bits (the sandbox user must have no way to
# root), SSH host and authorized keys (each VM gets its own at boot), caches.
SEAL = f"""exec >{PORT} 2>&1 </dev/null || exit {NO_LOG_PORT}
set -e
rm -rf {WORK}
find / -xdev -type f -perm /6000 -print -exec chmod ug-s {{}} +
rm -f /etc/ssh/ssh_host_* /etc/ssh/authorized_keys/*
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \\
    /root/.bash_history
find /tmp /var/tmp -mindepth 1 -delete
sync
"""


class BuildFailed(Exception):
    """The build cannot succeed; the message becomes the image's ``reason``."""


class BuildInterrupted(Exception):
    """The service is stopping: the build is abandoned (and queued again)."""


def write_inputs(target: Path, setup: Path, files: Path | None) -> None:
    """The inputs disk: a tar of ``setup`` (mode 0700) and ``files/`` holding the checked
    upload (``files`` is a tar that :mod:`app.services.archives` wrote)."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
        info = out.gettarinfo(str(setup), arcname="setup")
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o700, 0, 0, "root", "root"
        with open(setup, "rb") as data:
            out.addfile(info, data)
        folder = tarfile.TarInfo("files")
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        out.addfile(folder)
        if files is None:
            return
        with tarfile.open(files, "r:") as source:
            for member in source:  # names are normalised already ("." is the top)
                if member.name == ".":
                    continue
                member.name = f"files/{member.name}"
                out.addfile(member, source.extractfile(member) if member.isfile() else None)


class BuildGuest:
    """One build VM: run programs in it as root, with their output going to the build log.

    Use as a context manager: the log port is read from enter to exit.
    """

    def __init__(self, hypervisor: Hypervisor, vm_id: str, log_socket: Path,
                 log: BuildLog) -> None:
        self.hypervisor = hypervisor
        self.vm_id = vm_id
        self.reader = PortReader(str(log_socket), log.write)

    def __enter__(self) -> BuildGuest:
        self.reader.start(timeout=AGENT_TIMEOUT_S)
        return self

    def __exit__(self, *_exc: t.Any) -> None:
        self.reader.stop()

    def run(self, script: str, timeout_s: float, stop: threading.Event) -> int:
        """Run ``script`` with bash as root; its exit code.

        :raises BuildFailed: it did not end within ``timeout_s``, or the runner failed.
        :raises BuildInterrupted: ``stop`` was set meanwhile.
        :raises HypervisorError: the guest agent does not answer.
        """
        pid = self.hypervisor.guest_agent_spawn(self.vm_id, "/bin/bash", ["-c", script],
                                                AGENT_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.hypervisor.guest_agent_status(self.vm_id, pid, AGENT_TIMEOUT_S)
            if code in (NO_LOG_PORT, NO_INPUTS):
                raise BuildFailed("the build VM could not read its inputs or write its log "
                                  f"(exit {code}); is the base image's guest intact?")
            if code is not None:
                return code
            if stop.is_set():
                raise BuildInterrupted("the service is stopping")
            if time.monotonic() > deadline:
                raise BuildFailed(f"did not finish within {timeout_s:.0f} s")
            stop.wait(POLL_S)

    def power_off(self, timeout_s: float) -> None:
        """A clean shutdown (the guest agent's), a hard power-off after ``timeout_s``."""
        with contextlib.suppress(HypervisorError):  # then powered off below
            self.hypervisor.request_shutdown(self.vm_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.hypervisor.get_domain(self.vm_id).state == "shutoff":
                    return
            except VmNotFound:
                raise BuildFailed("the build VM disappeared") from None
            time.sleep(0.5)
        self.hypervisor.destroy_domain(self.vm_id)
