"""SSH key material the manager creates: per-VM host keys and the manager's client key."""
from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MANAGER_KEY_NAME = "manager_ed25519"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # PEM-like "-----BEGIN OPENSSH PRIVATE KEY-----"
    public_openssh: str   # "ssh-ed25519 AAAA..."


def generate_keypair(comment: str = "") -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}".strip())


def write_private(path: Path, content: str) -> None:
    """Write a secret readable by root only (created 0600, never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def manager_keypair(keys_dir: Path) -> KeyPair:
    """The manager's client key, created once per installation (safe across processes)."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = keys_dir / MANAGER_KEY_NAME
    public_path = keys_dir / f"{MANAGER_KEY_NAME}.pub"
    with open(keys_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (private_path.exists() and public_path.exists()):
            pair = generate_keypair("run-dat-sheesh-manager")
            write_private(private_path, pair.private_openssh)
            public_path.write_text(pair.public_openssh + "\n")
    return KeyPair(private_path.read_text(), public_path.read_text().strip())
