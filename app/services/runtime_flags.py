"""Which ``denoFlags`` / ``nodeFlags`` a caller may pass (pure): an allowlist of flags that
cannot widen what a run may do.

A blocklist cannot work: Deno clusters short flags and takes attached values (``-qA``,
``-RW``, ``-R/``, ``-Nhost``, ``-Pdefault``, ``-I`` all switch permissions on), and new
releases add flags. So every flag is one whole token that must match one of the patterns
below; anything else is a 400. Permissions themselves are always set by the service.
"""
from __future__ import annotations

import re

from app.errors import InvalidRequest

# V8 options that only size or slow the engine down (no natives syntax, no sandbox toggles).
V8_FLAG = r"--(max-old-space-size=\d{1,6}|max-semi-space-size=\d{1,4}|stack-size=\d{1,6}|" \
          r"expose-gc|jitless)"
V8_FLAGS = rf"{V8_FLAG}(,{V8_FLAG})*"
DENO_ALLOWED = re.compile(
    r"^(--unstable(-[a-z0-9]+(-[a-z0-9]+)*)?"
    r"|--seed=\d{1,19}"
    rf"|--v8-flags={V8_FLAGS}"
    r"|--location=https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]{1,2000}"
    r"|--check|--check=all|--no-check|--no-check=remote"
    r"|--quiet|-q|--no-remote|--cached-only|--no-npm)$")
NODE_ALLOWED = re.compile(
    r"^(--max-old-space-size=\d{1,6}|--max-semi-space-size=\d{1,4}|--stack-size=\d{1,6}"
    r"|--stack-trace-limit=\d{1,6}|--expose-gc|--jitless"
    r"|--no-warnings|--no-deprecation|--pending-deprecation|--throw-deprecation"
    r"|--trace-warnings|--trace-uncaught|--trace-deprecation|--enable-source-maps"
    r"|--frozen-intrinsics|--disable-proto=(delete|throw)"
    r"|--unhandled-rejections=(strict|warn|none|throw|warn-with-error-code)"
    r"|--experimental-vm-modules|--experimental-wasm-modules)$")
DENO_HELP = ("--unstable[-FEATURE], --seed=N, --v8-flags=(--max-old-space-size=N, "
             "--max-semi-space-size=N, --stack-size=N, --expose-gc, --jitless), "
             "--location=URL, --check[=all], --no-check[=remote], --quiet, --no-remote, "
             "--cached-only, --no-npm")
NODE_HELP = ("--max-old-space-size=N, --max-semi-space-size=N, --stack-size=N, "
             "--stack-trace-limit=N, --expose-gc, --jitless, --no-warnings, --no-deprecation, "
             "--pending-deprecation, --throw-deprecation, --trace-warnings, --trace-uncaught, "
             "--trace-deprecation, --enable-source-maps, --frozen-intrinsics, "
             "--disable-proto=delete|throw, --unhandled-rejections=MODE, "
             "--experimental-vm-modules, --experimental-wasm-modules")


def check_deno_flags(flags: list[str]) -> None:
    """:raises InvalidRequest: for the first flag not on the allowlist."""
    _check(flags, DENO_ALLOWED, "denoFlags", DENO_HELP)


def check_node_flags(flags: list[str]) -> None:
    """:raises InvalidRequest: for the first flag not on the allowlist."""
    _check(flags, NODE_ALLOWED, "nodeFlags", NODE_HELP)


def _check(flags: list[str], allowed: re.Pattern, field: str, help_text: str) -> None:
    for flag in flags:
        if not allowed.match(flag):
            shown = flag if len(flag) <= 80 else flag[:80] + "..."
            raise InvalidRequest(f"{field} entry {shown!r} is not allowed: permissions are set "
                                 f"by the service; allowed flags: {help_text}")
