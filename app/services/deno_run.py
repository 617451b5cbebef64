"""How run-ts starts Deno: its permission sandbox, the key of a warm Deno, the main module."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

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
