"""GuestTransport: the manager's paramiko transport to a guest, AES-GCM preferred.

An AEAD cipher needs no separate MAC, and HMAC-SHA-256 is the guest sshd's largest per-byte
cost under emulation (20 MiB over SFTP: ~6 s instead of ~9.5 s on a TCG guest,
BENCHMARKS.md). For the small messages of an exec it costs the guest no more than AES-CTR with
HMAC-SHA-256 (BENCHMARKS.md, "Session 16"). The other ciphers stay as fallbacks.
"""
from __future__ import annotations

import paramiko


class GuestTransport(paramiko.Transport):
    _preferred_ciphers = (
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
        *(name for name in paramiko.Transport._preferred_ciphers if "gcm" not in name))
