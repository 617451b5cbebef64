"""denoFlags / nodeFlags: an allowlist. Deno clusters short flags and takes attached values,
so the old blocklist let these through and switched the permission sandbox off."""
from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.services.runtime_flags import check_deno_flags, check_node_flags

BYPASSES_OF_THE_OLD_BLOCKLIST = ["-qA", "-RW", "-R/", "-W/", "-Nhost", "-Pdefault", "-I",
                                 "-Ar", "-qR=/", "-Aq"]


@pytest.mark.parametrize("flag", BYPASSES_OF_THE_OLD_BLOCKLIST + [
    "-A", "--allow-all", "--allow-read=/", "--allow-run", "-R", "--permission-set=x",
    "--unsafely-ignore-certificate-errors", "--inspect", "--inspect-brk=0.0.0.0:9229",
    "--v8-flags=--allow-natives-syntax",
    "--v8-flags=--max-old-space-size=64,--allow-natives-syntax",
    "--env-file=/etc/shadow", "--config=/tmp/deno.json", "--import-map=/tmp/m.json",
    "--preload=/tmp/x.ts", "--cert=/tmp/ca.pem", "--location=file:///etc/passwd",
    "--seed=1 --allow-all", "--unstable --allow-all", "not-a-flag", "--", "", "-",
    "--check\0", "--quiet\n-A"])
def test_widening_or_unknown_deno_flags_are_refused(flag):
    with pytest.raises(InvalidRequest, match="denoFlags entry"):
        check_deno_flags([flag])


@pytest.mark.parametrize("flag", [
    "--unstable", "--unstable-kv", "--unstable-sloppy-imports", "--seed=42",
    "--v8-flags=--max-old-space-size=128", "--v8-flags=--expose-gc,--stack-size=2000",
    "--location=https://example.test/app/", "--check", "--check=all", "--no-check",
    "--no-check=remote", "--quiet", "-q", "--no-remote", "--cached-only", "--no-npm"])
def test_flags_that_cannot_widen_permissions_are_allowed(flag):
    check_deno_flags([flag])


@pytest.mark.parametrize("flag", [
    "--require=/tmp/x.js", "-r", "--import=/tmp/x.mjs", "--loader=/tmp/l.mjs",
    "--experimental-loader=x", "--inspect", "--inspect-brk", "-e", "--eval=1", "-p",
    "--env-file=/etc/shadow", "--allow-natives-syntax", "-pe", "--experimental-permission",
    "--title=x", "nope"])
def test_node_flags_outside_the_allowlist_are_refused(flag):
    with pytest.raises(InvalidRequest, match="nodeFlags entry"):
        check_node_flags([flag])


@pytest.mark.parametrize("flag", ["--max-old-space-size=256", "--no-warnings",
                                  "--enable-source-maps", "--unhandled-rejections=strict",
                                  "--stack-size=2000", "--expose-gc"])
def test_harmless_node_flags_are_allowed(flag):
    check_node_flags([flag])


def test_a_long_refused_flag_is_shortened_in_the_message():
    with pytest.raises(InvalidRequest) as caught:
        check_deno_flags(["--x" * 1000])
    assert len(caught.value.message) < 1000
