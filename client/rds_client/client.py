"""The lower-level client: one method per API call, VM ids passed explicitly.

:class:`~rds_client.Sandbox` wraps one VM of it; use ``Client`` directly to list, inspect and
clean up VMs (``delete_by_label`` is a CI job's cleanup step).
"""
from __future__ import annotations

import os
import typing as t
import urllib.parse
from pathlib import Path

import httpx

from rds_client.archive import (ChunkReader, Progress, check_uploadable, counted,
                                extract_tar_gz, tar_gz_chunks)
from rds_client.errors import CommandFailed, NotFound, TransportError
from rds_client.http import DEFAULT_TIMEOUT_S, Http, transport_error
from rds_client.models import CommandResult, RunResult, Snapshot, Vm
from rds_client.streaming import NDJSON, ExecStream

CREATE_TIMEOUT_S = 300.0  # a create boots a VM: seconds from a snapshot, a minute cold on TCG
TRANSFER_TIMEOUT_S = 300.0  # longest pause in an upload or download
EXEC_MARGIN_S = 30.0  # on top of a command's own timeout: queueing, SSH set-up, the kill
MAX_EXEC_TIMEOUT_MS = 120_000  # the server's default maximum, assumed when none is given
ENV_URL, ENV_API_KEY = "RDS_URL", "RDS_API_KEY"

Env = t.Mapping[str, str] | t.Sequence[str]
Labels = t.Mapping[str, str]
R = t.TypeVar("R", bound=CommandResult)


def resolve_config(url: str | None, api_key: str | None) -> tuple[str, str]:
    """``url`` and ``api_key``, or ``RDS_URL`` and ``RDS_API_KEY`` where they are ``None``.

    :raises ValueError: neither gives a value.
    """
    url = url or os.environ.get(ENV_URL)
    api_key = api_key or os.environ.get(ENV_API_KEY)
    if not url:
        raise ValueError(f"no service URL: set {ENV_URL} or pass url (--url)")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"service URL {url!r} must start with http:// or https://")
    if not api_key:
        raise ValueError(f"no API key: set {ENV_API_KEY} or pass api_key (--api-key)")
    return url, api_key


def exec_timeout_s(timeout_ms: int | None) -> float:
    """How long to wait for a command's answer: its own timeout plus a margin."""
    return (timeout_ms if timeout_ms is not None else MAX_EXEC_TIMEOUT_MS) / 1000 + EXEC_MARGIN_S


def env_object(env: Env | None) -> dict[str, str]:
    """exec's ``env``: an object (a ``["K=V"]`` list is converted)."""
    if env is None:
        return {}
    if isinstance(env, t.Mapping):
        return dict(env)
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)


def env_list(env: Env | None) -> list[str]:
    """run-ts/run-js's ``env``: a ``["K=V"]`` list (a mapping is converted)."""
    if env is None:
        return []
    if isinstance(env, t.Mapping):
        return [f"{key}={value}" for key, value in env.items()]
    return list(env)


def label_params(labels: Labels | None) -> list[tuple[str, str]]:
    return [("label", f"{key}={value}") for key, value in (labels or {}).items()]


class Client:
    """The run-dat-sheesh API.

    :param url: base URL of the service (default ``$RDS_URL``).
    :param api_key: the API key (default ``$RDS_API_KEY``).
    :param timeout: seconds to wait for calls that name no timeout of their own.
    :param create_timeout: seconds to wait for a create or start (a boot).
    :param retries: at most this many repeats of an idempotent call (GET, DELETE).
    :param transport: an httpx transport, e.g. ``httpx.MockTransport`` in tests.
    :raises ValueError: no URL or API key.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, create_timeout: float = CREATE_TIMEOUT_S,
                 retries: int = 3, transport: httpx.BaseTransport | None = None,
                 verify: bool | str = True, **http_options: t.Any) -> None:
        url, api_key = resolve_config(url, api_key)
        self.create_timeout = create_timeout
        self.http = Http(url, api_key, timeout=timeout, retries=retries, transport=transport,
                         verify=verify, **http_options)

    @property
    def url(self) -> str:
        return self.http.url

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- VMs ---------------------------------------------------------------------------------

    def create_vm(self, *, cpu: int = 1, mem_mb: int = 256,
                  allow_ips: t.Sequence[str] = (), outbound_internet: bool = False,
                  labels: Labels | None = None, ttl_seconds: int | None = None,
                  idle_stop_seconds: int | None = None, image_id: str | None = None,
                  snapshot_id: str | None = None, disk_size_mb: int | None = None,
                  provision_mode: str | None = None, timeout: float | None = None) -> Vm:
        """Create and boot a VM; returns once commands can run in it. Optional fields left at
        ``None`` are not sent (the server's defaults apply).

        :raises QuotaExceeded: over ``MAX_VMS``.
        """
        body: dict[str, t.Any] = {"cpu": cpu, "memMb": mem_mb, "allowIps": list(allow_ips),
                                  "outboundInternet": outbound_internet}
        optional = {"labels": dict(labels) if labels is not None else None,
                    "ttlSeconds": ttl_seconds, "idleStopSeconds": idle_stop_seconds,
                    "imageId": image_id, "snapshotId": snapshot_id, "diskSizeMb": disk_size_mb,
                    "provisionMode": provision_mode}
        body.update({key: value for key, value in optional.items() if value is not None})
        return Vm.from_json(self.http.call_json(
            "POST", "/v1/vms", json_body=body, timeout=timeout or self.create_timeout))

    def get_vm(self, vm_id: str) -> Vm:
        """:raises NotFound: no such VM."""
        return Vm.from_json(self.http.call_json("GET", f"/v1/vms/{_id(vm_id)}"))

    def iter_vms(self, *, labels: Labels | None = None, state: str | None = None,
                 page_size: int | None = 50) -> t.Iterator[Vm]:
        """Every VM whose labels include ``labels`` (all of them) and, if given, in ``state``;
        fetched ``page_size`` at a time, following the ``X-Next-Cursor`` header.

        The filters are also checked here, so a server without filters cannot widen the list.
        """
        params: list[tuple[str, str]] = label_params(labels)
        if state:
            params.append(("state", state))
        if page_size:
            params.append(("limit", str(page_size)))
        seen: set[str] = set()
        while True:
            response = self.http.call("GET", "/v1/vms", params=params)
            for item in response.json():
                vm = Vm.from_json(item)
                if _matches(vm, labels, state):
                    yield vm
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                return
            if cursor in seen:
                raise TransportError(f"the server repeated the list cursor {cursor!r}")
            seen.add(cursor)
            params = [item for item in params if item[0] != "cursor"] + [("cursor", cursor)]

    def list_vms(self, *, labels: Labels | None = None, state: str | None = None) -> list[Vm]:
        """:meth:`iter_vms` as a list."""
        return list(self.iter_vms(labels=labels, state=state))

    def delete_vm(self, vm_id: str, *, missing_ok: bool = False) -> bool:
        """Delete a VM with its disk, filter and address; returns whether it existed.

        :param missing_ok: a VM that is already gone is no error (returns ``False``).
        :raises NotFound: no such VM and not ``missing_ok``.
        """
        try:
            self.http.call("DELETE", f"/v1/vms/{_id(vm_id)}")
        except NotFound:
            if missing_ok:
                return False
            raise
        return True

    def delete_by_label(self, labels: Labels) -> list[str]:
        """Delete every VM whose labels include all of ``labels``; returns their ids.

        :raises ValueError: no label given (the server never deletes everything).
        """
        if not labels:
            raise ValueError("delete_by_label needs at least one label")
        body = self.http.call_json("DELETE", "/v1/vms", params=label_params(labels))
        return [str(vm_id) for vm_id in body.get("deleted", [])]

    def stop_vm(self, vm_id: str, *, timeout: float = 120.0) -> None:
        """Shut a RUNNING VM down cleanly; its disk is kept. :raises Conflict: not RUNNING."""
        self.http.call("POST", f"/v1/vms/{_id(vm_id)}/stop", timeout=timeout)

    def start_vm(self, vm_id: str, *, timeout: float | None = None) -> None:
        """Boot a STOPPED VM from its disk. :raises Conflict: not STOPPED."""
        self.http.call("POST", f"/v1/vms/{_id(vm_id)}/start",
                       timeout=timeout or self.create_timeout)

    def keepalive(self, vm_id: str, ttl_seconds: int | None = None) -> Vm:
        """Push the VM's expiry to ``ttl_seconds`` from now (default: its own TTL again)."""
        body = {} if ttl_seconds is None else {"ttlSeconds": ttl_seconds}
        return Vm.from_json(self.http.call_json("POST", f"/v1/vms/{_id(vm_id)}/keepalive",
                                                json_body=body))

    def set_labels(self, vm_id: str, labels: Labels) -> Vm:
        """Replace the VM's labels as a whole."""
        return Vm.from_json(self.http.call_json("PATCH", f"/v1/vms/{_id(vm_id)}",
                                                json_body={"labels": dict(labels)}))

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot(self, vm_id: str, *, timeout: float = TRANSFER_TIMEOUT_S) -> Snapshot:
        """Snapshot the disk of a RUNNING or STOPPED VM; ``create_vm(snapshot_id=...)`` starts
        new VMs from it."""
        return Snapshot.from_json(self.http.call_json(
            "POST", f"/v1/vms/{_id(vm_id)}/snapshots", timeout=timeout))

    def list_snapshots(self) -> list[Snapshot]:
        return [Snapshot.from_json(item) for item in self.http.call_json("GET", "/v1/snapshots")]

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return Snapshot.from_json(self.http.call_json("GET", f"/v1/snapshots/{_id(snapshot_id)}"))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """:raises Conflict: a VM created from it still exists."""
        self.http.call("DELETE", f"/v1/snapshots/{_id(snapshot_id)}")

    # ---- commands ----------------------------------------------------------------------------

    def exec(self, vm_id: str, cmd: str, *, cwd: str | None = None, env: Env | None = None,
             timeout_ms: int | None = None, check: bool = False) -> CommandResult:
        """Run ``cmd`` with bash as uid 1000 in ``/workspace`` (or ``cwd``).

        A non-zero exit or a timeout is in the result, not an exception, unless ``check``.

        :raises CommandFailed: with ``check``, the command exited non-zero or timed out.
        :raises Conflict: the VM is not RUNNING.
        """
        body = self._exec_body(cmd, cwd, env, timeout_ms)
        result = CommandResult.from_json(self.http.call_json(
            "POST", f"/v1/vms/{_id(vm_id)}/exec", json_body=body,
            timeout=exec_timeout_s(timeout_ms)))
        return _checked(result, check)

    def run_ts(self, vm_id: str, code: str | os.PathLike[str] | None = None, *,
               path: str | None = None, args: t.Sequence[str] = (), env: Env | None = None,
               deno_flags: t.Sequence[str] = (), timeout_ms: int | None = None,
               check: bool = False) -> RunResult:
        """Run TypeScript with Deno in its permission sandbox.

        :param code: the program; a ``pathlib.Path`` is a local file whose text is sent.
        :param path: instead of ``code``, a file inside the VM's workspace.
        :param env: ``{"K": "V"}`` or ``["K=V"]``; the script may read only these keys.
        """
        body = self._run_body(code, path, args, env, timeout_ms, "denoFlags", deno_flags)
        return self._run("run-ts", vm_id, body, timeout_ms, check)

    def run_js(self, vm_id: str, code: str | os.PathLike[str] | None = None, *,
               path: str | None = None, args: t.Sequence[str] = (), env: Env | None = None,
               node_flags: t.Sequence[str] = (), timeout_ms: int | None = None,
               check: bool = False) -> RunResult:
        """Run JavaScript with Node.js; arguments as :meth:`run_ts`."""
        body = self._run_body(code, path, args, env, timeout_ms, "nodeFlags", node_flags)
        return self._run("run-js", vm_id, body, timeout_ms, check)

    def stream(self, vm_id: str, cmd: str, *, cwd: str | None = None, env: Env | None = None,
               timeout_ms: int | None = None) -> ExecStream[CommandResult]:
        """Run ``cmd`` as :meth:`exec` does, its output arriving as it happens: iterate the
        answer for :class:`OutputChunk` items, then the :class:`CommandResult`."""
        body = self._exec_body(cmd, cwd, env, timeout_ms)
        return self._stream("exec", vm_id, body, timeout_ms, CommandResult)

    def stream_ts(self, vm_id: str, code: str | os.PathLike[str] | None = None, *,
                  path: str | None = None, args: t.Sequence[str] = (), env: Env | None = None,
                  deno_flags: t.Sequence[str] = (),
                  timeout_ms: int | None = None) -> ExecStream[RunResult]:
        """:meth:`run_ts`, streamed as :meth:`stream` is."""
        body = self._run_body(code, path, args, env, timeout_ms, "denoFlags", deno_flags)
        return self._stream("run-ts", vm_id, body, timeout_ms, RunResult)

    def stream_js(self, vm_id: str, code: str | os.PathLike[str] | None = None, *,
                  path: str | None = None, args: t.Sequence[str] = (), env: Env | None = None,
                  node_flags: t.Sequence[str] = (),
                  timeout_ms: int | None = None) -> ExecStream[RunResult]:
        """:meth:`run_js`, streamed as :meth:`stream` is."""
        body = self._run_body(code, path, args, env, timeout_ms, "nodeFlags", node_flags)
        return self._stream("run-js", vm_id, body, timeout_ms, RunResult)

    @staticmethod
    def _exec_body(cmd: str, cwd: str | None, env: Env | None,
                   timeout_ms: int | None) -> dict[str, t.Any]:
        body: dict[str, t.Any] = {"cmd": cmd, "env": env_object(env)}
        if cwd is not None:
            body["cwd"] = cwd
        if timeout_ms is not None:
            body["timeoutMs"] = timeout_ms
        return body

    @staticmethod
    def _run_body(code: str | os.PathLike[str] | None, path: str | None, args: t.Sequence[str],
                  env: Env | None, timeout_ms: int | None, flags_key: str,
                  flags: t.Sequence[str]) -> dict[str, t.Any]:
        if (code is None) == (path is None):
            raise ValueError("give exactly one of code and path")
        if isinstance(code, os.PathLike):
            code = Path(code).read_text(encoding="utf-8")
        body: dict[str, t.Any] = {"args": list(args), "env": env_list(env),
                                  flags_key: list(flags)}
        body.update({"code": code} if code is not None else {"path": path})
        if timeout_ms is not None:
            body["timeoutMs"] = timeout_ms
        return body

    def _run(self, route: str, vm_id: str, body: dict[str, t.Any], timeout_ms: int | None,
             check: bool) -> RunResult:
        result = RunResult.from_json(self.http.call_json(
            "POST", f"/v1/vms/{_id(vm_id)}/{route}", json_body=body,
            timeout=exec_timeout_s(timeout_ms)))
        return _checked(result, check)

    def _stream(self, route: str, vm_id: str, body: dict[str, t.Any], timeout_ms: int | None,
                result_type: type[R]) -> ExecStream[R]:
        path, timeout = f"/v1/vms/{_id(vm_id)}/{route}", exec_timeout_s(timeout_ms)
        response = self.http.open("POST", path, json_body=body, timeout=timeout,
                                  headers={"Accept": f"{NDJSON}, application/json;q=0.5"})
        return ExecStream(response, result_type, f"POST {path}", timeout)

    # ---- files -------------------------------------------------------------------------------

    def upload(self, vm_id: str, local_path: str | os.PathLike[str], dest: str, *,
               progress: Progress | None = None, timeout: float = TRANSFER_TIMEOUT_S) -> None:
        """Send a local file or directory into the directory ``dest`` of the workspace, as a
        tar.gz streamed from disk: a directory's contents land in ``dest``, a file under its
        own name. Existing files of the same names are replaced, others kept.

        :param progress: called with the number of compressed bytes sent so far.
        :raises PayloadTooLarge: over the server's upload limits.
        :raises BadRequest: ``dest`` outside the workspace, or an entry the server refuses.
        """
        source = Path(local_path)
        check_uploadable(source)
        self.http.call(
            "POST", f"/v1/vms/{_id(vm_id)}/files/upload", params={"dest": dest},
            content=lambda: counted(tar_gz_chunks(source), progress),
            headers={"Content-Type": "application/gzip"}, timeout=timeout)

    def download(self, vm_id: str, path: str, local_dir: str | os.PathLike[str], *,
                 progress: Progress | None = None,
                 timeout: float = TRANSFER_TIMEOUT_S) -> list[Path]:
        """Fetch a file or directory of the workspace into ``local_dir`` (created if missing):
        a directory's contents, or the file under its own name. Returns the paths written.

        :raises NotFound: ``path`` does not exist in the VM.
        :raises UnsafeArchive: the archive tried to write outside ``local_dir``.
        """
        what = f"GET /v1/vms/{vm_id}/files/download"
        response = self.http.open("GET", f"/v1/vms/{_id(vm_id)}/files/download",
                                  params={"path": path}, timeout=timeout,
                                  headers={"Accept": "application/gzip"})
        try:
            reader = ChunkReader(counted(response.iter_bytes(), progress))
            return extract_tar_gz(reader, Path(local_dir))
        except httpx.HTTPError as exc:
            raise transport_error(exc, what, timeout) from exc
        finally:
            response.close()


def _id(value: str) -> str:
    """A VM or snapshot id as one path segment (an id with '/' must not reach other routes)."""
    return urllib.parse.quote(str(value), safe="")


def _matches(vm: Vm, labels: Labels | None, state: str | None) -> bool:
    if state and vm.state != state:
        return False
    return all(vm.labels.get(key) == value for key, value in (labels or {}).items())


def _checked(result: R, check: bool) -> R:
    if check and not result.ok:
        raise CommandFailed(result)
    return result
