"""The command line's prelude, run by the local bash as the guest's sshd would run it."""
from __future__ import annotations

import subprocess

from app.services.prelude import (SSHD_VARIABLES, WORKSPACE, marker_environment, refusal,
                                  sandbox_command_line)
from app.models import CommandResult

# What OpenSSH's session.c sets in the manager's sessions (no pty, no forced command, no agent
# forwarding, no ExposeAuthInfo: guest/rootfs/etc/ssh/sshd_config), besides the login basics.
SSHD_ENV = {"SSH_CLIENT": "172.16.0.1 40000 22", "SSH_CONNECTION": "172.16.0.1 40000 1 22",
            "MAIL": "/var/mail/user"}


def run_line(line: str, cwd: str, marker: str = "m1") -> subprocess.CompletedProcess:
    """``line`` as sshd runs it: the env request's marker (AcceptEnv) and sshd's variables
    in the shell's environment."""
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "HOME": cwd, **SSHD_ENV,
                               **marker_environment(marker)})


def test_the_command_sees_neither_sshd_variables_nor_mail_but_its_own(tmp_path):
    line = sandbox_command_line("env", WORKSPACE, ["GREETING=hi there"], "m1")
    done = run_line(line, str(tmp_path))
    assert done.returncode == 0, done.stderr
    env = dict(item.split("=", 1) for item in done.stdout.decode().splitlines())
    assert not [name for name in env if name.startswith("SSH_") or name == "MAIL"]
    assert env["GREETING"] == "hi there" and env["RDS_EXEC_ID"] == "m1"
    assert set(SSHD_ENV) <= set(SSHD_VARIABLES)


def test_the_marker_is_in_the_shells_command_line_and_not_exported_again(tmp_path):
    """kill-marked finds the command's shell by its command line (also on an image whose sshd
    does not accept the env request) and its children by their environment."""
    line = sandbox_command_line("grep -qa RDS_EXEC_ID=0123abcd /proc/$$/cmdline && echo found; "
                                "printenv RDS_EXEC_ID", WORKSPACE, [], "0123abcd")
    assert "export" not in line and line.splitlines()[0] == "# RDS_EXEC_ID=0123abcd"
    done = run_line(line, str(tmp_path), marker="0123abcd")
    assert done.stdout.decode().splitlines() == ["found", "0123abcd"], done.stderr


def test_the_default_directory_is_not_checked_again():
    """The session starts in /workspace (sshd: HOME): the line has no cd and no check."""
    line = sandbox_command_line("true", WORKSPACE, [], "m1")
    assert "cd " not in line and "case " not in line and "${!" not in line


def test_a_directory_outside_the_workspace_is_refused(tmp_path):
    line = sandbox_command_line("echo ran", str(tmp_path), [], "m1")
    done = run_line(line, str(tmp_path))
    answer = CommandResult(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr,
                           duration_ms=1)
    assert done.stdout == b"" and refusal(answer) == f"cwd {tmp_path} resolves outside /workspace"


def test_a_missing_directory_is_refused(tmp_path):
    line = sandbox_command_line("echo ran", "/workspace/does/not/exist", [], "m1")
    done = run_line(line, str(tmp_path))
    assert done.returncode == 210 and b"does not exist" in done.stderr
