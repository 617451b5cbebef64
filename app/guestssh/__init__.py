"""GuestSSH: how the service talks to its guests (the only package that imports paramiko).

- :mod:`app.guestssh.client`: one client per VM, one channel per command, the VM's host key
  pinned, every phase under the request's deadline;
- :mod:`app.guestssh.channels`: a command's stdin, output (whole or as it arrives) and exit
  on its channel;
- :mod:`app.guestssh.output_stream`: a large output read as a stream (downloads);
- :mod:`app.guestssh.transport`: the SSH connection itself (its cipher order, a channel
  requested without waiting for the answer);
- :mod:`app.guestssh.spare`: the next command's channel, requested with a command's own
  request;
- :mod:`app.guestssh.watchdog`: closes what paramiko would wait on forever.
"""
from __future__ import annotations

from app.guestssh.channels import OutputCaps, RunningCommand, StdinWriter
from app.guestssh.client import (GUEST_MAX_SESSIONS, GUEST_USER, MAX_COMMAND_BYTES, GuestSSH,
                                 SshTimeouts, check_command_line, check_environment,
                                 load_private_key, parse_public_key)
from app.guestssh.output_stream import OutputStream
from app.guestssh.transport import GuestTransport

__all__ = ["GUEST_MAX_SESSIONS", "GUEST_USER", "MAX_COMMAND_BYTES", "GuestSSH", "GuestTransport",
           "OutputCaps", "OutputStream", "RunningCommand", "SshTimeouts", "StdinWriter",
           "check_command_line", "check_environment", "load_private_key", "parse_public_key"]
