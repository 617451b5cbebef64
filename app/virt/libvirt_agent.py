"""qemu-guest-agent calls of :class:`app.virt.connection.Hypervisor` (a mixin).

Raw agent commands go through ``libvirt_qemu.qemuAgentCommand`` on the connection's helper
threads, so they share its deadlines and error translation.
"""
from __future__ import annotations

import base64
import json
import time
import typing as t

import libvirt
import libvirt_qemu

from app.errors import HypervisorError


class GuestAgentCalls:
    """Talk to qemu-guest-agent in a running domain; needs the connection's ``_call``."""

    _call: t.Callable[..., t.Any]

    def set_guest_time(self, uuid: str, timeout: float) -> None:
        """Set the guest's clock to the host's now (qemu-guest-agent ``guest-set-time``).

        Sent as a raw agent command rather than ``virDomainSetTime``, which takes the
        domain's job lock and runs hwclock through the agent's own code path.
        """
        def set_time(conn: t.Any) -> None:
            request = {"execute": "guest-set-time", "arguments": {"time": time.time_ns()}}
            libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(uuid), json.dumps(request),
                                          int(timeout) or 1, 0)
        self._call("set guest time", set_time, timeout=timeout + 5)

    def guest_agent_ping(self, uuid: str, timeout: float) -> bool:
        """True when qemu-guest-agent in the guest answers."""
        def ping(conn: t.Any) -> bool:
            try:
                libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(uuid),
                                              '{"execute": "guest-ping"}', int(timeout) or 1, 0)
                return True
            except libvirt.libvirtError:
                return False
        return self._call("guest agent ping", ping, timeout=timeout + 5)

    def guest_agent_exec(self, uuid: str, path: str, args: list[str], timeout: float,
                         stdin: bytes | None = None) -> int:
        """Run a program as root in the guest through qemu-guest-agent (no network needed).

        :param stdin: bytes fed to the program's standard input (kept off its command line).
        :returns: its exit code.
        :raises HypervisorError: when the agent does not answer or the program hangs.
        """
        pid = self.guest_agent_spawn(uuid, path, args, timeout, stdin)
        return self.guest_agent_wait(uuid, pid, timeout)

    def guest_agent_spawn(self, uuid: str, path: str, args: list[str], timeout: float,
                          stdin: bytes | None = None) -> int:
        """Start a program as root in the guest (``guest-exec``) and return its guest pid at
        once; :meth:`guest_agent_wait` collects the exit code. Other agent commands may be
        sent meanwhile.

        :raises HypervisorError: when the agent does not answer.
        """
        def spawn(conn: t.Any) -> int:
            request: dict[str, t.Any] = {"execute": "guest-exec",
                                         "arguments": {"path": path, "arg": args}}
            if stdin is not None:
                request["arguments"]["input-data"] = base64.b64encode(stdin).decode()
            reply = libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(uuid),
                                                  json.dumps(request), int(timeout) or 1, 0)
            return int(json.loads(reply)["return"]["pid"])
        return self._call("guest agent exec", spawn, timeout=timeout + 5)

    def guest_agent_wait(self, uuid: str, pid: int, timeout: float) -> int:
        """Wait for a program started by :meth:`guest_agent_spawn`; returns its exit code.

        :raises HypervisorError: when the agent does not answer or the program hangs.
        """
        def wait(conn: t.Any) -> int:
            dom = conn.lookupByUUIDString(uuid)
            request = json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = json.loads(libvirt_qemu.qemuAgentCommand(
                    dom, request, int(timeout) or 1, 0))["return"]
                if status.get("exited"):
                    return int(status.get("exitcode", -1))
                time.sleep(0.02)
            raise HypervisorError(f"guest agent command (pid {pid}) did not finish in time")
        return self._call("guest agent wait", wait, timeout=timeout + 5)

    def guest_agent_status(self, uuid: str, pid: int, timeout: float) -> int | None:
        """One look at a program started by :meth:`guest_agent_spawn`: its exit code, or None
        while it runs (for programs that run for minutes, polled at the caller's pace).

        :raises HypervisorError: when the agent does not answer.
        """
        def status(conn: t.Any) -> int | None:
            request = json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            reply = json.loads(libvirt_qemu.qemuAgentCommand(
                conn.lookupByUUIDString(uuid), request, int(timeout) or 1, 0))["return"]
            if not reply.get("exited"):
                return None
            if "signal" in reply:  # killed: the shell's convention
                return 128 + int(reply["signal"])
            return int(reply.get("exitcode", -1))
        return self._call("guest agent status", status, timeout=timeout + 5)

    def fs_freeze(self, uuid: str, timeout: float) -> int:
        """Flush and freeze the guest's filesystems through qemu-guest-agent
        (``virDomainFSFreeze``); the guest's writes wait until :meth:`fs_thaw`.

        :returns: how many filesystems were frozen.
        :raises HypervisorError: no agent, the agent refused, or no answer within ``timeout``
            (the freeze may still land later: always follow with :meth:`fs_thaw`).
        """
        return self._call("freeze guest filesystems",
                          lambda conn: conn.lookupByUUIDString(uuid).fsFreeze(None, 0),
                          timeout=timeout)

    def fs_thaw(self, uuid: str, timeout: float) -> int:
        """Thaw the guest's filesystems (``virDomainFSThaw``); harmless when none are frozen.

        :returns: how many filesystems were thawed.
        :raises HypervisorError: no agent, or no answer within ``timeout``.
        """
        return self._call("thaw guest filesystems",
                          lambda conn: conn.lookupByUUIDString(uuid).fsThaw(None, 0),
                          timeout=timeout)
