"""``Sandbox``: one VM, from create to delete.

    with Sandbox.create(cpu=1, mem_mb=256, labels={"ci.job": "42"}, ttl_seconds=600) as sb:
        sb.upload("./src", "/workspace/src")
        print(sb.exec("cd src && make test").exit_code)

The VM is deleted when the ``with`` block ends, also on an exception; ``ttl_seconds`` is the
safety net for a job that dies before it gets there.
"""
from __future__ import annotations

import os
import typing as t
from pathlib import Path

from rds_client.archive import Progress
from rds_client.client import Client, Env, Labels
from rds_client.models import CommandResult, RunResult, Snapshot, Vm
from rds_client.streaming import ExecStream


class Sandbox:
    """One VM and the client that talks to it. Make one with :meth:`create` or
    :meth:`connect`; every method acts on this VM (see :class:`Client` for the details of
    each call).

    :param client: the client to use (closed with the sandbox if ``owns_client``).
    :param vm: the VM as last seen (refreshed by :meth:`refresh`, keepalive, labels).
    :param delete_on_exit: delete the VM when a ``with`` block ends.
    """

    def __init__(self, client: Client, vm: Vm, *, delete_on_exit: bool = True,
                 owns_client: bool = False) -> None:
        self.client = client
        self.vm = vm
        self.delete_on_exit = delete_on_exit
        self._owns_client = owns_client

    @property
    def id(self) -> str:
        return self.vm.id

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.vm.state!r})"

    # ---- making one --------------------------------------------------------------------------

    @classmethod
    def create(cls, url: str | None = None, api_key: str | None = None, *, cpu: int = 1,
               mem_mb: int = 256, allow_ips: t.Sequence[str] = (),
               outbound_internet: bool = False, labels: Labels | None = None,
               ttl_seconds: int | None = None, idle_stop_seconds: int | None = None,
               image_id: str | None = None, snapshot_id: str | None = None,
               disk_size_mb: int | None = None, provision_mode: str | None = None,
               client: Client | None = None, **client_options: t.Any) -> Sandbox:
        """Create and boot a VM (``url``/``api_key`` default to ``$RDS_URL``/``$RDS_API_KEY``).

        :param client: an existing client to share instead of opening one.
        :param client_options: passed to :class:`Client` (``timeout``, ``retries``, ...).
        :raises QuotaExceeded: over the server's ``MAX_VMS``.
        """
        owns = client is None
        client = client or Client(url, api_key, **client_options)
        try:
            vm = client.create_vm(cpu=cpu, mem_mb=mem_mb, allow_ips=allow_ips,
                                  outbound_internet=outbound_internet, labels=labels,
                                  ttl_seconds=ttl_seconds, idle_stop_seconds=idle_stop_seconds,
                                  image_id=image_id, snapshot_id=snapshot_id,
                                  disk_size_mb=disk_size_mb, provision_mode=provision_mode)
        except BaseException:
            if owns:
                client.close()
            raise
        return cls(client, vm, delete_on_exit=True, owns_client=owns)

    @classmethod
    def connect(cls, url: str | None = None, api_key: str | None = None,
                vm_id: str | None = None, *, delete_on_exit: bool = False,
                client: Client | None = None, **client_options: t.Any) -> Sandbox:
        """Attach to an existing VM. Unlike :meth:`create`, leaving a ``with`` block keeps the
        VM unless ``delete_on_exit`` is true.

        :raises NotFound: no such VM.
        """
        if not vm_id:
            raise ValueError("connect needs a vm_id")
        owns = client is None
        client = client or Client(url, api_key, **client_options)
        try:
            vm = client.get_vm(vm_id)
        except BaseException:
            if owns:
                client.close()
            raise
        return cls(client, vm, delete_on_exit=delete_on_exit, owns_client=owns)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.delete_on_exit:
                self.client.delete_vm(self.id, missing_ok=True)
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (the VM stays)."""
        if self._owns_client:
            self.client.close()

    # ---- the VM ------------------------------------------------------------------------------

    def refresh(self) -> Vm:
        """Fetch the VM again (state, expiry, labels)."""
        self.vm = self.client.get_vm(self.id)
        return self.vm

    def delete(self) -> None:
        """Delete the VM now (a later ``with`` exit does nothing more)."""
        self.client.delete_vm(self.id, missing_ok=True)
        self.delete_on_exit = False

    def stop(self) -> None:
        self.client.stop_vm(self.id)
        self.refresh()

    def start(self) -> None:
        self.client.start_vm(self.id)
        self.refresh()

    def keepalive(self, ttl_seconds: int | None = None) -> Vm:
        """Expire ``ttl_seconds`` from now (default: the VM's own TTL again)."""
        self.vm = self.client.keepalive(self.id, ttl_seconds)
        return self.vm

    def set_labels(self, labels: Labels) -> Vm:
        """Replace the VM's labels."""
        self.vm = self.client.set_labels(self.id, labels)
        return self.vm

    def snapshot(self) -> Snapshot:
        """Snapshot the disk; ``Sandbox.create(snapshot_id=snap.id)`` starts from it."""
        return self.client.snapshot(self.id)

    # ---- running things ----------------------------------------------------------------------

    def exec(self, cmd: str, *, cwd: str | None = None, env: Env | None = None,
             timeout_ms: int | None = None, check: bool = False) -> CommandResult:
        """Run ``cmd`` with bash as uid 1000; a non-zero exit raises only with ``check``."""
        return self.client.exec(self.id, cmd, cwd=cwd, env=env, timeout_ms=timeout_ms,
                                check=check)

    def run_ts(self, code: str | os.PathLike[str] | None = None, **kwargs: t.Any) -> RunResult:
        """TypeScript with Deno (``code``, a local ``Path``, or ``path=`` in the VM)."""
        return self.client.run_ts(self.id, code, **kwargs)

    def run_js(self, code: str | os.PathLike[str] | None = None, **kwargs: t.Any) -> RunResult:
        """JavaScript with Node.js, arguments as :meth:`run_ts`."""
        return self.client.run_js(self.id, code, **kwargs)

    def stream(self, cmd: str, *, cwd: str | None = None, env: Env | None = None,
               timeout_ms: int | None = None) -> ExecStream[CommandResult]:
        """:meth:`exec` with the output as it happens: ``OutputChunk`` items, then the
        ``CommandResult``."""
        return self.client.stream(self.id, cmd, cwd=cwd, env=env, timeout_ms=timeout_ms)

    def stream_ts(self, code: str | os.PathLike[str] | None = None,
                  **kwargs: t.Any) -> ExecStream[RunResult]:
        return self.client.stream_ts(self.id, code, **kwargs)

    def stream_js(self, code: str | os.PathLike[str] | None = None,
                  **kwargs: t.Any) -> ExecStream[RunResult]:
        return self.client.stream_js(self.id, code, **kwargs)

    # ---- files -------------------------------------------------------------------------------

    def upload(self, local_path: str | os.PathLike[str], dest: str, *,
               progress: Progress | None = None) -> None:
        """Send a file or directory into the workspace directory ``dest``."""
        self.client.upload(self.id, local_path, dest, progress=progress)

    def download(self, path: str, local_dir: str | os.PathLike[str], *,
                 progress: Progress | None = None) -> list[Path]:
        """Fetch a workspace file or directory into ``local_dir``, safely."""
        return self.client.download(self.id, path, local_dir, progress=progress)
