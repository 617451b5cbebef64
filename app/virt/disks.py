"""qcow2 overlays on a template's read-only image (argv lists, timeouts)."""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from app.errors import HypervisorError

log = logging.getLogger(__name__)
QEMU_IMG_TIMEOUT = 60.0


def create_overlay(backing: Path, overlay: Path, size_mb: int,
                   timeout: float = QEMU_IMG_TIMEOUT) -> None:
    """Create ``overlay`` (qcow2) backed by ``backing`` with a virtual size of ``size_mb``.

    :raises HypervisorError: when qemu-img fails or times out.
    """
    _qemu_img(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing),
               str(overlay), f"{size_mb}M"], timeout)
    log.debug("overlay created path=%s backing=%s size_mb=%s", overlay, backing, size_mb)


def virtual_size_mb(image: Path, timeout: float = QEMU_IMG_TIMEOUT) -> int:
    info = json.loads(_qemu_img(["info", "--output=json", "-U", str(image)], timeout))
    return int(info["virtual-size"]) // (1024 * 1024)


def _qemu_img(args: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HypervisorError(f"qemu-img {args[0]} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise HypervisorError(f"qemu-img cannot run: {exc}") from exc
    if done.returncode != 0:
        raise HypervisorError(f"qemu-img {args[0]} failed: {done.stderr.strip()}")
    return done.stdout
