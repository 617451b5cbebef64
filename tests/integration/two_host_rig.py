"""A second libvirt "host" on this machine, for the multi-host tests (issue 17).

No second machine exists here, so the second host is built from the kernel's namespaces:

- a network namespace ``rds-h2`` joined to this host by a veth pair (``rds-h2-a`` here,
  10.210.0.1/30; ``rds-h2-b`` there, 10.210.0.2/30);
- a mount namespace in which libvirt's directories (``/etc/libvirt``, ``/run/libvirt``,
  ``/var/lib/libvirt``, ``/var/cache/libvirt``, ``/var/log/libvirt``) are bind mounts of the
  rig's own under :data:`RIG_ROOT`, so its daemons share no state, socket or definition with
  this host's;
- its own virtlogd and libvirtd there, the libvirtd listening for the remote driver over TCP
  on the veth address only (``qemu+tcp://10.210.0.2/system``, no authentication: it is
  reachable from this machine alone; a real second host uses TLS, see docs/multihost.md);
- a route on this host to the second host's guest subnet (172.16.1.0/24) through the veth,
  so the manager reaches its guests the way it would reach a routed remote host's.

Everything has an ``rds-`` name, so the suite's leak check sees a rig left behind.
:meth:`SecondHost.stop` removes it all and is safe to run on the leftovers of a killed run.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import typing as t
from pathlib import Path

RIG_ROOT = Path("/var/lib/rds-rig")
LIBVIRT_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
                "/var/log/libvirt")
TIMEOUT_S = 30


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=check)


def _kill_pidfile(path: Path, grace_s: float = 10) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


class SecondHost:
    """The rig's second host (see the module's docstring)."""

    def __init__(self, name: str = "rds-h2", host_address: str = "10.210.0.1",
                 peer_address: str = "10.210.0.2", guest_cidr: str = "172.16.1.0/24",
                 bridge: str = "rds-br1") -> None:
        self.name = name
        self.host_address = host_address
        self.peer_address = peer_address
        self.guest_cidr = guest_cidr
        self.bridge = bridge
        self.root = RIG_ROOT / name
        self.host_veth = f"{name}-a"
        self.peer_veth = f"{name}-b"

    @property
    def uri(self) -> str:
        """How a manager on this host reaches the second libvirtd (the remote driver)."""
        return f"qemu+tcp://{self.peer_address}/system"

    def hosts_entry(self, name: str = "h2", **extra: t.Any) -> dict[str, t.Any]:
        """This host as a manager's ``HOSTS`` entry (app/config/hosts.py) named ``name``: its
        URI and guest subnet, plus ``extra`` keys (``maxVms``, say)."""
        return {"name": name, "uri": self.uri, "guestCidr": self.guest_cidr, **extra}

    def hosts_setting(self, name: str = "h2", **extra: t.Any) -> str:
        """``HOSTS`` naming this host alone (:meth:`hosts_entry`), for a manager here."""
        return json.dumps([self.hosts_entry(name, **extra)])

    def in_namespace(self, *command: str) -> list[str]:
        """``command`` run inside the second host's network namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def daemon_pid(self, daemon: str) -> int | None:
        try:
            return int((self.root / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> SecondHost:
        self.stop()  # the leftovers of a killed run
        self._make_state_dirs()
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name",
             self.peer_veth)
        _run("ip", "link", "set", self.peer_veth, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_veth)
        _run("ip", "link", "set", self.host_veth, "up")
        for command in (("ip", "addr", "add", f"{self.peer_address}/30", "dev", self.peer_veth),
                        ("ip", "link", "set", self.peer_veth, "up"),
                        ("ip", "link", "set", "lo", "up"),
                        ("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")):
            _run(*self.in_namespace(*command))
        _run("ip", "route", "replace", self.guest_cidr, "via", self.peer_address)
        mounts = "; ".join(f"mount --bind {self._state_dir(path)} {path}"
                           for path in LIBVIRT_DIRS)
        # The daemons keep the mount namespace alive after the shell exits. libvirtd runs
        # under tini as a subreaper, as this host's does (deploy/host-setup.sh: QEMU
        # daemonizes, and its zombies must be reaped at once). Their descriptors: none of
        # ours (a pipe held open would keep the call below waiting).
        script = (f"set -e; {mounts}; "
                  f"virtlogd -d -p {self.root}/virtlogd.pid; {self._libvirtd_command()}")
        subprocess.run(self.in_namespace("unshare", "--mount", "--propagation", "private",
                                         "bash", "-c", script),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=TIMEOUT_S, check=True,
                       close_fds=True)
        self._wait_until_answering()
        return self

    def stop_libvirtd(self) -> None:
        """Stop the second host's libvirtd alone (a host whose libvirt stops answering); its
        namespaces, virtlogd and state stay for :meth:`start_libvirtd`."""
        _kill_pidfile(self.root / "libvirtd.pid")
        (self.root / "libvirtd.pid").unlink(missing_ok=True)

    def start_libvirtd(self) -> None:
        """Start it again in the rig's namespaces (entered through its virtlogd's)."""
        anchor = self.daemon_pid("virtlogd")
        assert anchor is not None, "the rig is not running"
        subprocess.run(["nsenter", "-t", str(anchor), "-m", "-n", "bash", "-c",
                        self._libvirtd_command()],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=TIMEOUT_S, check=True,
                       close_fds=True)
        self._wait_until_answering()

    def freeze_libvirtd(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) its libvirtd: a host that accepts connections and then never
        answers, as a hung or overloaded one does."""
        pid = self.daemon_pid("libvirtd")
        assert pid is not None, "the second libvirtd is not running"
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def _libvirtd_command(self) -> str:
        return (f"setsid tini -s -- libvirtd -l -p {self.root}/libvirtd.pid "
                f">>{self.root}/libvirtd.log 2>&1 &")

    def stop(self) -> None:
        """Power off its guests, stop its daemons, remove namespace, veth, route and state."""
        if self.daemon_pid("libvirtd") is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                for name in _run("virsh", "-c", self.uri, "list", "--name",
                                 check=False).stdout.split():
                    _run("virsh", "-c", self.uri, "destroy", name, check=False)
        for daemon in ("libvirtd", "virtlogd"):
            _kill_pidfile(self.root / f"{daemon}.pid")
        if self.name in _run("ip", "netns", "list", check=False).stdout.split():
            # Whatever still runs there (a guest's QEMU, a dnsmasq) goes with the namespace.
            for pid in _run("ip", "netns", "pids", self.name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", self.name, check=False)
        _run("ip", "route", "del", self.guest_cidr, check=False)
        _run("ip", "link", "del", self.host_veth, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SecondHost:
        return self.start()

    def __exit__(self, *_exc: t.Any) -> None:
        self.stop()

    def path_here(self, path: str) -> Path:
        """Where a file the second host sees at ``path`` (under one of LIBVIRT_DIRS) is on
        this host."""
        for directory in LIBVIRT_DIRS:
            if path == directory or path.startswith(directory + "/"):
                return self._state_dir(directory) / path.removeprefix(directory).lstrip("/")
        raise ValueError(f"{path} is not in the second host's own directories")

    def _state_dir(self, path: str) -> Path:
        return self.root / path.strip("/").replace("/", "_")

    def _make_state_dirs(self) -> None:
        """Fresh libvirt directories: this host's configuration without its definitions
        (domains, networks, pools, this service's filters), and the empty directory tree of
        its state with the same owners and modes."""
        for path in LIBVIRT_DIRS:
            self._state_dir(path).mkdir(parents=True)
        etc = self._state_dir("/etc/libvirt")
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
        for pattern in ("qemu/*.xml", "qemu/autostart/*", "qemu/networks/*.xml",
                        "qemu/networks/autostart/*", "storage/*.xml", "storage/autostart/*",
                        "nwfilter/rds-*"):
            for definition in etc.glob(pattern):
                definition.unlink()
        with (etc / "libvirtd.conf").open("a") as conf:
            conf.write(f'\n# the two-host rig\nlisten_tls = 0\nlisten_tcp = 1\n'
                       f'listen_addr = "{self.peer_address}"\nauth_tcp = "none"\n')
        state = self._state_dir("/var/lib/libvirt")
        for directory, _subdirs, _files in os.walk("/var/lib/libvirt"):
            relative = Path(directory).relative_to("/var/lib/libvirt")
            if relative.parts[:1] == ("qemu",) and len(relative.parts) > 1:
                continue  # this host's per-domain state: not the second host's
            target = state / relative
            target.mkdir(exist_ok=True)
            shutil.copystat(directory, target)
            stat = os.stat(directory)
            os.chown(target, stat.st_uid, stat.st_gid)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            if _run("virsh", "-c", self.uri, "version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the second libvirtd ({self.uri}) does not answer")
            time.sleep(0.3)
