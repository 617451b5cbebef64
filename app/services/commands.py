"""CommandService: exec, run-ts (Deno) and run-js (Node.js) in a RUNNING VM, over SSH.

Everything runs as the sandbox user through the in-guest helper ``/usr/local/lib/rds/exec``
(see guest/README.md), which confines the working directory to ``/workspace``, starts from a
clean environment and tags every process with a per-command marker. On timeout the manager
kills every tagged process (background children included) over SSH, or through the guest
agent when SSH itself is starved.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import re
import shlex
import typing as t
import uuid
from pathlib import Path

from app.config import Settings
from app.errors import AppError, GuestUnreachable, InvalidRequest
from app.guestssh import GuestSSH
from app.models import CommandResult, RunResult
from app.services.runtime_flags import check_deno_flags, check_node_flags
from app.services.vms import VmService
from app.services.workspace import GUEST_HELPERS as HELPERS, workspace_path

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)

RUNNER = f"{HELPERS}/runner.mjs"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = {"RDS_EXEC_ID"}
NOT_STARTED_CODES = {210, 211}
KILL_TIMEOUT = 15.0
KILL_WAIT_S = 1.5  # how long a timed-out call waits for its kill before answering
# Deno's permission sandbox: the workspace and the temp dirs, plus what DNS and TLS code reads
# (as the original service grants). Never the spool of warm Denos (/run/rds-deno) or Deno's
# cache (/var/cache/rds-deno): a run that could write them could spy on the next one.
DENO_WRITABLE = ("/workspace", "/tmp", "/var/tmp")
DENO_READABLE = (*DENO_WRITABLE, "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf",
                 "/etc/ssl/certs/ca-certificates.crt")
# denoFlags a warm Deno may be started with: they act on the runtime, not on how Deno loads
# the program (e.g. --check reads the program while Deno starts: a spare would wait for it).
WARM_DENO_FLAGS = re.compile(r"^--(unstable(-[a-z0-9-]+)?|v8-flags=.*|seed=[0-9]+|"
                             r"location=\S+)$")


# The command runs in the login shell (bash, started by sshd as `bash -c LINE`), after a
# prelude of builtins only: every extra process costs 50-100 ms on an emulated (TCG) guest,
# and even builtins cost a few ms each. The guest's sshd provides the fixed part: the session
# starts in HOME=/workspace with the sandbox's PATH, TMPDIR and DENO_DIR (sshd_config SetEnv)
# and inherits the process and open-file limits (/etc/rds/run-sshd). The prelude confines the
# working directory to the workspace, drops what sshd adds (SSH_*, MAIL) and exports the
# caller's variables. RDS_EXEC_ID marks the command: it is in this shell's command line and
# in the environment of every process the command starts, so kill-marked can end the whole
# tree on timeout. Exit 210/211 with an "rds-exec:" message mean the command was not started.
# No LANG: assigning one makes bash load the locale (~20 ms under TCG). Commands run in the
# POSIX locale, as in a plain SSH session; callers who want UTF-8 pass LANG=C.UTF-8 in env.
WORKSPACE = "/workspace"


def sandbox_command_line(command: str, cwd: str, env_pairs: list[str], marker: str) -> str:
    """The SSH command line that runs ``command`` (a shell script) in ``cwd`` (pure)."""
    exports = [*env_pairs, f"RDS_EXEC_ID={marker}"]
    missing = shlex.quote(f"rds-exec: cwd {cwd} does not exist or is not a directory")
    outside = shlex.quote(f"rds-exec: cwd {cwd} resolves outside /workspace")
    lines = []
    if cwd != WORKSPACE:  # the session already starts in the workspace (sshd: HOME)
        lines.append(f"cd -P -- {shlex.quote(cwd)} 2>/dev/null || "
                     f"{{ echo {missing} >&2; exit 210; }}")
    return "\n".join([
        *lines,
        f"case $PWD/ in /workspace/*) ;; *) echo {outside} >&2; exit 211 ;; esac",
        "unset ${!SSH_@} MAIL",
        "export " + " ".join(shlex.quote(item) for item in exports),
        # The caller's script starts on a line of its own, so that a syntax error in it cannot
        # keep the prelude from running first.
        command,
    ])


class CommandService:
    """Runs commands in VMs. Thread-safe; one per worker process."""

    def __init__(self, settings: Settings, vms: VmService, hypervisor: Hypervisor) -> None:
        """:param hypervisor: for the guest agent, when a kill over SSH fails."""
        self.settings = settings
        self.vms = vms
        self.hypervisor = hypervisor
        self._killer = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                             thread_name_prefix="kill-tree")

    # exec ##################################################################################

    def exec(self, vm_id: str, cmd: str, cwd: str | None, env: dict[str, str] | None,
             timeout_ms: int | None) -> CommandResult:
        """Run ``cmd`` through /bin/sh as uid 1000.

        :raises InvalidRequest: bad cwd/env/timeout.
        :raises VmNotFound: / :raises VmStateConflict: unless the VM is RUNNING.
        """
        timeout = self._timeout_s(timeout_ms)
        directory = workspace_path(cwd, "cwd")
        pairs = [f"{key}={value}" for key, value in self._check_env(env or {}).items()]
        return self._run(vm_id, cmd, directory, pairs, timeout, stdin=b"").command

    # run-ts / run-js #######################################################################

    def run_ts(self, vm_id: str, code: str | None, path: str | None, args: list[str],
               env: dict[str, str], flags: list[str], timeout_ms: int | None) -> RunResult:
        """Run TypeScript with Deno inside its permission sandbox."""
        check_deno_flags(flags)
        env_map = self._check_env(env)
        deno_flags = deno_run_flags(env_map, self._egress_allowed(vm_id), flags)
        workspace_file = self._code_or_path(code, path)
        token = uuid.uuid4().hex
        request = json.dumps({"token": token, "env": env_map, "args": args})
        command = (f". {HELPERS}/run-ts && rds_run_ts " + shlex.join(
            [warm_deno_key(deno_flags, flags, env_map), request, *deno_flags, "--", *args]))
        return self._run_script(vm_id, command, env_map, deno_program(code, workspace_file)
                                .encode(), token, timeout_ms)

    def run_js(self, vm_id: str, code: str | None, path: str | None, args: list[str],
               env: dict[str, str], flags: list[str], timeout_ms: int | None) -> RunResult:
        """Run JavaScript (ES module) with Node.js; same result/env/timeout contract.

        ``runner.mjs`` is Node's main module (see guest/README.md): a JSON header line and the
        code on stdin; it writes the code to a file named after its content and imports it.
        """
        check_node_flags(flags)
        env_map = self._check_env(env)
        workspace_file = self._code_or_path(code, path)
        token = uuid.uuid4().hex
        source = (code or "").encode()
        code_file = f"/tmp/rds-code-{hashlib.sha256(source).hexdigest()}-main.mjs"
        header = {"token": token, "ext": "mjs", "file": code_file, "path": workspace_file}
        return self._run_script(vm_id, "exec " + shlex.join(["node", *flags, RUNNER, *args]),
                                env_map, json.dumps(header).encode() + b"\n" + source, token,
                                timeout_ms,
                                after_timeout=f"rm -f {code_file} {code_file}.{token}")

    def _code_or_path(self, code: str | None, path: str | None) -> str | None:
        """:returns: the workspace file to run, or None for ``code``.

        :raises InvalidRequest: not exactly one of them, or a path outside the workspace.
        """
        if (code is None) == (path is None):
            raise InvalidRequest("give exactly one of 'code' or 'path'")
        return workspace_path(path, "path") if path is not None else None

    def _run_script(self, vm_id: str, command: str, env_map: dict[str, str], stdin: bytes,
                    token: str, timeout_ms: int | None, after_timeout: str = "") -> RunResult:
        """Run a runtime whose runner reports the outcome after ``token`` at the end of
        stderr (see guest/README.md)."""
        timeout = self._timeout_s(timeout_ms)
        pairs = [f"{key}={value}" for key, value in env_map.items()]
        run = self._run(vm_id, command, "/workspace", pairs, timeout,
                        stdin=stdin, after_timeout=after_timeout)
        return split_outcome(run.command, b"\x1e" + token.encode())

    # Plumbing ##############################################################################

    def _run(self, vm_id: str, command: str, cwd: str, env_pairs: list[str], timeout: float,
             stdin: bytes, after_timeout: str = "") -> RunResult:
        guest = self.vms.guest(vm_id)
        marker = uuid.uuid4().hex
        line = sandbox_command_line(command, cwd, env_pairs, marker)
        result = guest.run(line, timeout=timeout, stdin=stdin,
                           max_output=self.settings.max_output_bytes)
        if result.timed_out:
            self._kill_tree(vm_id, guest, marker, after_timeout)
            note = (f"\n[run-dat-sheesh] command timed out after {int(timeout * 1000)} ms; "
                    f"its process tree was killed\n").encode()
            result = dataclasses.replace(result, exit_code=-1, stderr=result.stderr + note)
        elif result.exit_code in NOT_STARTED_CODES and result.stderr.startswith(b"rds-exec:"):
            raise InvalidRequest(result.stderr.decode(errors="replace").strip()
                                 .removeprefix("rds-exec: "))
        return RunResult(command=result, outcome={})

    def _kill_tree(self, vm_id: str, guest: GuestSSH, marker: str, also: str = "") -> None:
        """Kill the timed-out command's process tree, waiting at most :data:`KILL_WAIT_S`:
        the answer must leave within its deadline + 2 s even when the guest's SSH is stuck.
        The kill itself goes on in the background until it is done."""
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
            except GuestUnreachable as exc:
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


def deno_run_flags(env_map: dict[str, str], egress: bool, caller_flags: list[str]) -> list[str]:
    """``deno run``'s flags for a run: Deno's permission sandbox, then the caller's flags."""
    permissions = ["--allow-read=" + ",".join(DENO_READABLE),
                   "--allow-write=" + ",".join(DENO_WRITABLE)]
    if env_map:
        permissions.append("--allow-env=" + ",".join(env_map))
    if egress:
        permissions.append("--allow-net")
    return ["--quiet", "--no-prompt", *permissions, *caller_flags]


def warm_deno_key(deno_flags: list[str], caller_flags: list[str],
                  env_map: dict[str, str]) -> str:
    """The name under which a Deno started ahead with ``deno_flags`` waits in the guest
    (guest/README.md, "run-ts"); "" when this run must start its own: variables that Deno
    reads while it starts (DENO_*, NO_COLOR) would come too late for a warm one, and some of
    the caller's flags change how Deno loads the program (:data:`WARM_DENO_FLAGS`)."""
    if any(key.startswith("DENO_") or key == "NO_COLOR" for key in env_map):
        return ""
    if not all(WARM_DENO_FLAGS.match(flag) for flag in caller_flags):
        return ""
    return hashlib.sha256("\0".join(deno_flags).encode()).hexdigest()[:16]


def deno_program(code: str | None, path: str | None) -> str:
    """The main module run-ts gives Deno: the caller's code as it is (the runner is preloaded,
    see guest/README.md), or an import of the workspace file ``path``."""
    if path is not None:
        return f"await import({json.dumps(Path(path).as_uri())});\n"
    return code or ""


def _load_error(command: CommandResult) -> dict:
    """No outcome: the runtime stopped before the runner ran, e.g. Deno could not parse the
    caller's code ("error: SyntaxError: ..."). That first line becomes ``error``."""
    if command.timed_out or command.exit_code in (0, -1) or not command.stderr.startswith(
            b"error: "):
        return {}
    first = command.stderr.split(b"\n", 1)[0].decode(errors="replace").removeprefix("error: ")
    name, sep, message = first.partition(": ")
    if not sep or not name.isidentifier():
        name, message = "Error", first
    return {"error": {"name": name, "message": message, "stack": ""}}


def split_outcome(command: CommandResult, token: bytes) -> RunResult:
    """Take the runner's outcome (after the last ``token`` on stderr) off the visible stderr.

    The outcome is searched in the untruncated tail of stderr, so a script that printed more
    than the cap still gets its ``result``.
    """
    stderr, tail = command.stderr, command.stderr_tail or command.stderr
    at = tail.rfind(token)
    if at < 0:
        return RunResult(command=command, outcome=_load_error(command))
    text = tail[at + len(token):].decode(errors="replace").strip()
    head_at = stderr.rfind(token)
    if head_at >= 0:
        stderr = stderr[:head_at]
        stderr = stderr[:-1] if stderr.endswith(b"\n") else stderr
    try:
        outcome = json.loads(text)
    except ValueError:
        outcome = {"error": {"name": "ResultError", "stack": "",
                             "message": "the script's result could not be read"}}
    visible = dataclasses.replace(command, stderr=stderr, stderr_tail=b"")
    return RunResult(command=visible, outcome=outcome if isinstance(outcome, dict) else {})
