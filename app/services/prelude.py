"""The SSH command line a sandboxed command runs as: a prelude, then the caller's script.

The command runs in the login shell (bash, which sshd starts as `bash -c LINE` through
guest/build/sandbox-shell.c), after a prelude of builtins only: every extra process costs
50-100 ms on an emulated (TCG) guest, and even builtins cost a few ms each. The guest's sshd
provides the fixed part: the session starts in HOME=/workspace with the sandbox's PATH, TMPDIR
and DENO_DIR (sshd_config SetEnv) and inherits the process and open-file limits
(/etc/rds/run-sshd). The prelude confines a caller's working directory to the workspace, drops
what sshd adds (SSH_*, MAIL) and exports the caller's variables. RDS_EXEC_ID marks the command:
the manager sends it as an SSH `env` request (the guest's sshd accepts that one name:
sshd_config AcceptEnv), so it is in the environment of every process the command starts, and
the line names it in a comment, so it is in this shell's command line too: kill-marked ends the
whole tree on timeout. (An image built before sshd accepted it still has the comment: its kill
finds the shell and its session.) Exit 210/211 with an "rds-exec:" message mean the command was
not started.

What each line costs shows under load (RELIABILITY.md, "Load"): under TCG a new bash
translates every code path it touches afresh, so the prelude names the variables sshd sets
(`${!SSH_@}` walks every variable: ~10 % of an exec's throughput) and checks the directory
only after a `cd` (the session starts in /workspace). No LANG: assigning one makes bash load
the locale (~20 ms under TCG). Commands run in the POSIX locale, as in a plain SSH session;
callers who want UTF-8 pass LANG=C.UTF-8 in env.
"""
from __future__ import annotations

import shlex

from app.models import CommandResult

WORKSPACE = "/workspace"
# What OpenSSH's sshd (UsePAM no) puts in an exec session's environment besides the login
# basics and sshd_config's SetEnv: SSH_CLIENT, SSH_CONNECTION and MAIL. (It sets SSH_TTY only
# with a pty, SSH_ORIGINAL_COMMAND with a forced command, SSH_AUTH_SOCK with agent forwarding
# and SSH_USER_AUTH with ExposeAuthInfo: the manager never asks for a pty and the guest's
# sshd_config allows none of the others. tests/integration/test_exec.py checks that no SSH_*
# variable is left.) Each name costs: `unset` was ~5 % of a `true` exec's guest CPU under TCG
# with seven names.
SSHD_VARIABLES = ("SSH_CLIENT", "SSH_CONNECTION", "MAIL")
NOT_STARTED_CODES = {210, 211}
MARKER_NAME = "RDS_EXEC_ID"
NOT_STARTED_PREFIX = b"rds-exec:"


def sandbox_command_line(command: str, cwd: str, env_pairs: list[str], marker: str,
                         announce: bool = False) -> str:
    """The SSH command line that runs ``command`` (a shell script) in ``cwd`` (pure).

    :param announce: print :func:`started_mark` on stdout once the prelude passed, before the
        script runs (a streamed call answers only then, so that a bad cwd is still a 400).
    """
    missing = shlex.quote(f"rds-exec: cwd {cwd} does not exist or is not a directory")
    outside = shlex.quote(f"rds-exec: cwd {cwd} resolves outside /workspace")
    lines = []
    if cwd != WORKSPACE:  # the session already starts in the workspace (sshd: HOME)
        lines += [f"cd -P -- {shlex.quote(cwd)} 2>/dev/null || "
                  f"{{ echo {missing} >&2; exit 210; }}",
                  f"case $PWD/ in /workspace/*) ;; *) echo {outside} >&2; exit 211 ;; esac"]
    # printf is a builtin: no extra process.
    announced = [f"printf %s {started_mark(marker).decode()}"] if announce else []
    # Only the caller's variables: each builtin line costs an emulated guest ~5 ms
    # (BENCHMARKS.md, "Load"); the marker came as an env request.
    exports = ["export " + " ".join(shlex.quote(item) for item in env_pairs)] if env_pairs \
        else []
    return "\n".join([
        marker_comment(marker),
        *lines,
        "unset " + " ".join(SSHD_VARIABLES),
        *exports,
        *announced,
        # The caller's script starts on a line of its own, so that a syntax error in it cannot
        # keep the prelude from running first.
        command,
    ])


def marker_environment(marker: str) -> dict[str, str]:
    """What the manager sends as SSH ``env`` requests with the command line (pure)."""
    return {MARKER_NAME: marker}


def marker_comment(marker: str) -> str:
    """The line's first line: the marker in the shell's command line (kill-marked reads it)."""
    return f"# {MARKER_NAME}={marker}"


def started_mark(marker: str) -> bytes:
    """What an announcing command line prints first on stdout (``marker``: RDS_EXEC_ID)."""
    return f"rds-started:{marker}".encode()


def refusal(result: CommandResult) -> str | None:
    """The prelude's message when it did not start the command (bad cwd), else None."""
    if result.exit_code in NOT_STARTED_CODES and result.stderr.startswith(NOT_STARTED_PREFIX):
        return result.stderr.decode(errors="replace").strip().removeprefix("rds-exec: ")
    return None
