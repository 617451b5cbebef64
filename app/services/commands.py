"""CommandService: exec, run-ts (Deno) and run-js (Node.js) in a RUNNING VM, over SSH.

Everything runs as the sandbox user behind a prelude (:mod:`app.services.prelude`) that
confines the working directory to ``/workspace``, starts from a clean environment and tags
every process with a per-command marker. On timeout (and when a streamed call's reader goes
away) the manager kills every tagged process (background children included) over SSH, or
through the guest agent when SSH itself is starved. Each call answers whole, or streamed
(``*_stream``: :class:`app.services.command_stream.CommandStream`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import operator
import re
import shlex
import typing as t
import uuid

from app import actor, metrics
from app.clock import now_iso
from app.config import Settings
from app.errors import AppError, GuestBusy, GuestUnreachable, InvalidRequest
from app.guestssh import GuestSSH
from app.models import CommandResult, RunResult
from app.services.command_stream import CommandStream, timeout_note
from app.services.deno_run import deno_program, deno_run_flags, warm_deno_key
from app.services.exec_history import ExecHistory
from app.services.outcome import OutcomeFilter, split_outcome
from app.services.prelude import (MARKER_NAME, WORKSPACE, marker_environment, refusal,
                                  sandbox_command_line, started_mark)
from app.services.runtime_flags import check_deno_flags, check_node_flags
from app.services.vms import VmService
from app.services.workspace import GUEST_HELPERS as HELPERS, workspace_path

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)

RUNNER = f"{HELPERS}/runner.mjs"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = {MARKER_NAME}
RS = b"\x1e"  # before the runner's token on stderr
KILL_TIMEOUT = 15.0
KILL_WAIT_S = 1.5  # how long a timed-out call waits for its kill before answering
R = t.TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Launch:
    """One command, checked and ready to start in a VM."""

    vm_id: str
    command: str  # the caller's shell script, after the prelude
    cwd: str
    env_pairs: tuple[str, ...]
    timeout: float
    stdin: bytes = b""
    token: str = ""  # run-ts/run-js: the runner writes its outcome after it on stderr
    after_timeout: str = ""  # shell commands to run after killing the tree on timeout
    kind: str = "exec"  # exec, run-ts, run-js (metrics, history)
    shown: str = ""  # what the exec history shows: the command, or the code or its path
    actor: str = dataclasses.field(default_factory=actor.current.get)  # who asked


def _whole(run: RunResult) -> RunResult:
    return run


class CommandService:
    """Runs commands in VMs. Thread-safe; one per worker process."""

    def __init__(self, settings: Settings, vms: VmService, hypervisor: Hypervisor,
                 history: ExecHistory | None = None) -> None:
        """:param hypervisor: for the guest agent, when a kill over SSH fails.
        :param history: where finished calls are recorded (GET .../exec-logs)."""
        self.settings = settings
        self.vms = vms
        self.hypervisor = hypervisor
        self.history = history
        self._killer = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                             thread_name_prefix="kill-tree")

    # exec ##################################################################################

    def exec(self, vm_id: str, cmd: str, cwd: str | None, env: dict[str, str] | None,
             timeout_ms: int | None) -> CommandResult:
        """Run ``cmd`` through /bin/sh as uid 1000.

        :raises InvalidRequest: bad cwd/env/timeout.
        :raises VmNotFound: / :raises VmStateConflict: unless the VM is RUNNING.
        """
        return self._run(self._exec_launch(vm_id, cmd, cwd, env, timeout_ms)).command

    def exec_stream(self, vm_id: str, cmd: str, cwd: str | None, env: dict[str, str] | None,
                    timeout_ms: int | None) -> CommandStream[CommandResult]:
        """:meth:`exec`, its output streamed: answers once the command has started (its cwd
        checked), and raises as :meth:`exec` until then."""
        return self._stream(self._exec_launch(vm_id, cmd, cwd, env, timeout_ms),
                            operator.attrgetter("command"))

    def _exec_launch(self, vm_id: str, cmd: str, cwd: str | None, env: dict[str, str] | None,
                     timeout_ms: int | None) -> Launch:
        timeout = self._timeout_s(timeout_ms)
        directory = workspace_path(cwd, "cwd")
        pairs = [f"{key}={value}" for key, value in self._check_env(env or {}).items()]
        return Launch(vm_id, cmd, directory, tuple(pairs), timeout, shown=cmd)

    # run-ts / run-js #######################################################################

    def run_ts(self, vm_id: str, code: str | None, path: str | None, args: list[str],
               env: dict[str, str], flags: list[str], timeout_ms: int | None) -> RunResult:
        """Run TypeScript with Deno inside its permission sandbox."""
        return self._run(self._ts_launch(vm_id, code, path, args, env, flags, timeout_ms))

    def run_ts_stream(self, vm_id: str, code: str | None, path: str | None, args: list[str],
                      env: dict[str, str], flags: list[str],
                      timeout_ms: int | None) -> CommandStream[RunResult]:
        """:meth:`run_ts`, its output streamed (as :meth:`exec_stream`)."""
        return self._stream(self._ts_launch(vm_id, code, path, args, env, flags, timeout_ms),
                            _whole)

    def _ts_launch(self, vm_id: str, code: str | None, path: str | None, args: list[str],
                   env: dict[str, str], flags: list[str], timeout_ms: int | None) -> Launch:
        check_deno_flags(flags)
        env_map = self._check_env(env)
        deno_flags = deno_run_flags(env_map, self._egress_allowed(vm_id), flags)
        workspace_file = self._code_or_path(code, path)
        token = uuid.uuid4().hex
        request = json.dumps({"token": token, "env": env_map, "args": args})
        command = (f". {HELPERS}/run-ts && rds_run_ts " + shlex.join(
            [warm_deno_key(deno_flags, flags, env_map), request, *deno_flags, "--", *args]))
        return dataclasses.replace(
            self._script(vm_id, command, env_map, deno_program(code, workspace_file).encode(),
                         token, timeout_ms), kind="run-ts", shown=_shown_code(code, path))

    def run_js(self, vm_id: str, code: str | None, path: str | None, args: list[str],
               env: dict[str, str], flags: list[str], timeout_ms: int | None) -> RunResult:
        """Run JavaScript (ES module) with Node.js; same result/env/timeout contract."""
        return self._run(self._js_launch(vm_id, code, path, args, env, flags, timeout_ms))

    def run_js_stream(self, vm_id: str, code: str | None, path: str | None, args: list[str],
                      env: dict[str, str], flags: list[str],
                      timeout_ms: int | None) -> CommandStream[RunResult]:
        """:meth:`run_js`, its output streamed (as :meth:`exec_stream`)."""
        return self._stream(self._js_launch(vm_id, code, path, args, env, flags, timeout_ms),
                            _whole)

    def _js_launch(self, vm_id: str, code: str | None, path: str | None, args: list[str],
                   env: dict[str, str], flags: list[str], timeout_ms: int | None) -> Launch:
        """``runner.mjs`` is Node's main module (see guest/README.md): a JSON header line and
        the code on stdin; it writes the code to a file named after its content and imports
        it."""
        check_node_flags(flags)
        env_map = self._check_env(env)
        workspace_file = self._code_or_path(code, path)
        token = uuid.uuid4().hex
        source = (code or "").encode()
        code_file = f"/tmp/rds-code-{hashlib.sha256(source).hexdigest()}-main.mjs"
        header = {"token": token, "ext": "mjs", "file": code_file, "path": workspace_file}
        launch = self._script(vm_id, "exec " + shlex.join(["node", *flags, RUNNER, *args]),
                              env_map, json.dumps(header).encode() + b"\n" + source, token,
                              timeout_ms, after_timeout=f"rm -f {code_file} {code_file}.{token}")
        return dataclasses.replace(launch, kind="run-js", shown=_shown_code(code, path))

    def _code_or_path(self, code: str | None, path: str | None) -> str | None:
        """:returns: the workspace file to run, or None for ``code``.

        :raises InvalidRequest: not exactly one of them, or a path outside the workspace.
        """
        if (code is None) == (path is None):
            raise InvalidRequest("give exactly one of 'code' or 'path'")
        return workspace_path(path, "path") if path is not None else None

    def _script(self, vm_id: str, command: str, env_map: dict[str, str], stdin: bytes,
                token: str, timeout_ms: int | None, after_timeout: str = "") -> Launch:
        """A runtime whose runner reports the outcome after ``token`` at the end of stderr
        (see guest/README.md)."""
        pairs = tuple(f"{key}={value}" for key, value in env_map.items())
        return Launch(vm_id, command, WORKSPACE, pairs, self._timeout_s(timeout_ms), stdin,
                      token, after_timeout)

    # Plumbing ##############################################################################

    def _run(self, launch: Launch) -> RunResult:
        started_at = now_iso()
        return self._finished(launch, self._run_now(launch), started_at)

    def _run_now(self, launch: Launch) -> RunResult:
        guest, marker, line = self._prepare(launch, announce=False)
        result = guest.run(line, timeout=launch.timeout, stdin=launch.stdin,
                           max_output=self.settings.max_output_bytes,
                           environment=marker_environment(marker))
        if result.timed_out:
            self._kill_tree(launch.vm_id, guest, marker, launch.after_timeout)
            result = dataclasses.replace(result, exit_code=-1,
                                         stderr=result.stderr + timeout_note(launch.timeout))
        elif (message := refusal(result)) is not None:
            raise InvalidRequest(message)
        if launch.token:
            return split_outcome(result, RS + launch.token.encode())
        return RunResult(command=result, outcome={})

    def _stream(self, launch: Launch, finish: t.Callable[[RunResult], R]) -> CommandStream[R]:
        started_at = now_iso()
        streams: list[CommandStream[R]] = []

        def record_and_finish(run: RunResult) -> R:
            heads = streams[0].heads  # the answer's stdout/stderr are empty: the lines had them
            seen = dataclasses.replace(run.command, stdout=heads["stdout"],
                                       stderr=heads["stderr"])
            self._finished(launch, dataclasses.replace(run, command=seen), started_at)
            return finish(run)

        guest, marker, line = self._prepare(launch, announce=True)
        running = guest.start(line, timeout=launch.timeout, stdin=launch.stdin,
                              environment=marker_environment(marker))
        stream = CommandStream(
            running, mark=started_mark(marker), max_output=self.settings.max_output_bytes,
            timeout=launch.timeout, finish=record_and_finish,
            kill=functools.partial(self._kill_tree, launch.vm_id, guest, marker,
                                   launch.after_timeout),
            outcome=OutcomeFilter(RS + launch.token.encode()) if launch.token else None)
        streams.append(stream)
        try:
            stream.wait_started()
        except BaseException:
            stream.close()
            raise
        return stream

    def _finished(self, launch: Launch, run: RunResult, started_at: str) -> RunResult:
        """Count and record a call that ran (a refused one raised before)."""
        metrics.COMMAND_DURATION.labels(launch.kind).observe(run.command.duration_ms / 1000)
        if self.history is not None:
            self.history.record(launch.vm_id, launch.kind, launch.shown, run.command,
                                started_at, launch.actor)
        return run

    def _prepare(self, launch: Launch, announce: bool) -> tuple[GuestSSH, str, str]:
        """:returns: the VM's guest, the command's marker (RDS_EXEC_ID) and command line."""
        guest = self.vms.guest(launch.vm_id)
        marker = uuid.uuid4().hex
        return guest, marker, sandbox_command_line(launch.command, launch.cwd,
                                                   list(launch.env_pairs), marker, announce)

    def _kill_tree(self, vm_id: str, guest: GuestSSH, marker: str, also: str = "") -> None:
        """Kill a command's process tree (timed out, or its stream's reader gone), waiting at
        most :data:`KILL_WAIT_S`: the answer must leave within its deadline + 2 s even when the
        guest's SSH is stuck. The kill itself goes on in the background until it is done."""
        future = self._killer.submit(self._kill_now, vm_id, guest, marker, also)
        try:
            future.result(timeout=KILL_WAIT_S)
        except concurrent.futures.TimeoutError:
            log.info("still killing a timed-out command in the background vm=%s", vm_id)

    def _kill_now(self, vm_id: str, guest: GuestSSH, marker: str, also: str) -> None:
        """kill-marked over the command's connection; if that one is stuck (the sandbox user
        can stop its own sshd session), over a new one; last, as root through the guest
        agent."""
        command = shlex.join([f"{HELPERS}/kill-marked", marker]) + (f"; {also}" if also else "")
        for attempt in (1, 2):  # GuestSSH drops a connection that stalled: 2 is on a new one
            try:
                done = guest.run(command, timeout=KILL_TIMEOUT)
            except (GuestUnreachable, GuestBusy) as exc:
                log.warning("kill over SSH failed vm=%s attempt=%s error=%s", vm_id, attempt,
                            exc.message)
                continue
            if done.exit_code == 0:
                return
            log.warning("kill-marked failed vm=%s exit=%s timed_out=%s", vm_id,
                        done.exit_code, done.timed_out)
            if not done.timed_out:
                break
        try:
            self.hypervisor.guest_agent_exec(vm_id, f"{HELPERS}/kill-marked", [marker],
                                                 KILL_TIMEOUT)
        except AppError as exc:
            log.error("could not kill timed-out command vm=%s error=%s", vm_id, exc.message)

    def _timeout_s(self, timeout_ms: int | None) -> float:
        limit = self.settings.max_exec_timeout_ms
        value = self.settings.default_exec_timeout_ms if timeout_ms is None else timeout_ms
        if not 1 <= value <= limit:
            raise InvalidRequest(f"timeoutMs must be between 1 and {limit}")
        return value / 1000.0

    def _egress_allowed(self, vm_id: str) -> bool:
        vm = self.vms.get(vm_id)
        return vm.outbound_internet and bool(vm.allow_ips)

    @staticmethod
    def _check_env(env: dict[str, str]) -> dict[str, str]:
        # NUL in a value is refused by the API's schemas (NulFreeString) and, for any caller,
        # by GuestSSH before the command line leaves (app.guestssh.check_command_line).
        for key in env:
            if not ENV_NAME.match(key) or key in RESERVED_ENV:
                raise InvalidRequest(f"env name {key!r} is not a valid variable name")
        return env




def _shown_code(code: str | None, path: str | None) -> str:
    return code if code is not None else f"path: {path}"
